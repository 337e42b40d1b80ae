//! Cluster benchmark on loopback: three real `streamhub-origin` processes as a Raft cluster, driven
//! through the public API, every phase bounded in time.
//!
//! 1. `POST /apps` to the leader: one sequential client (latency), then 16 concurrent clients.
//! 2. The same to a follower (forwarded to the leader, then a read-your-writes wait).
//! 3. `POST /apps/:app/tokens` (JWT minting, no Raft write) with 16 clients against one follower,
//!    with the node's CPU from `/proc/<pid>/stat`, next to `GET /apps/:app` (the same auth and
//!    app lookup without the minting) as the in-run baseline.
//! 4. kill -9 of the leader to the first write acknowledged by a survivor, three rounds.
//!
//! Each figure is printed with the ratio to its baseline in the same run (follower to leader,
//! tokens to the plain GET), as absolute times on a shared 2-core box say little on their own.
//!
//! Run (the origin binary defaults to `<workspace>/target/release/streamhub-origin`):
//!
//! ```sh
//! cargo build --release -p streamhub-origin
//! cargo run --release -p streamhub-chaos-tests --bin cluster_bench
//! ```
//!
//! `BENCH_SCALE=0.5` halves every phase duration; `CHAOS_SEED` as in the tests.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use streamhub_chaos_tests::{chaos_seed, poll, Api, Cluster};
use tokio::task::JoinSet;

const NODES: usize = 3;
const CONCURRENCY: usize = 16;
const SEQUENTIAL_SECS: f64 = 5.0;
const WRITE_SECS: f64 = 10.0;
const TOKEN_SECS: f64 = 5.0;
const FAILOVER_ROUNDS: usize = 3;
/// Per-request limit during load phases: a stuck request counts as an error, not a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A failover must produce a write within this; otherwise the round is reported as failed.
const FAILOVER_DEADLINE: Duration = Duration::from_secs(30);
/// How often a new probe write is launched during a failover (each with its own timeout, so one
/// request stuck on the dead leader does not delay the measurement).
const PROBE_EVERY: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_PROBES_IN_FLIGHT: usize = 64;
const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// One request kind of a load phase.
#[derive(Clone)]
enum Op {
    /// `POST /apps {name}` with names `<prefix>-<client>-<i>`; expects 201.
    CreateApp { prefix: &'static str },
    /// `POST /apps/:app/tokens`; expects 201.
    MintToken { app: String },
    /// `GET /apps/:app`; expects 200.
    GetApp { app: String },
}

impl Op {
    async fn send(&self, api: &Api, client: usize, i: usize) -> Result<(), String> {
        let (r, want) = match self {
            Op::CreateApp { prefix } => {
                (api.create_app(&format!("{prefix}-{client}-{i}")).await, 201)
            }
            Op::MintToken { app } => {
                let body = json!({"room": "bench", "identity": format!("viewer-{client}-{i}")});
                (api.post(&format!("/apps/{app}/tokens"), body).await, 201)
            }
            Op::GetApp { app } => (api.get(&format!("/apps/{app}")).await, 200),
        };
        match r {
            Ok(r) if r.status == want => Ok(()),
            Ok(r) => Err(format!(
                "status {} {}",
                r.status,
                r.error_code().unwrap_or("")
            )),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}

/// CPU ticks (utime + stime) of a process, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may itself hold spaces: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Pid of the origin process started with `--http <addr>` (the harness does not expose pids).
fn origin_pid(http: &str) -> Option<u32> {
    let want = format!("--http\0{http}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmd).contains(&want).then_some(pid)
    })
}

/// CPU used by each origin and by this process over a window, as % of one core.
struct CpuWindow {
    pids: Vec<Option<u32>>,
    start: Vec<Option<u64>>,
    at: Instant,
}

impl CpuWindow {
    fn begin(c: &Cluster) -> CpuWindow {
        let mut pids: Vec<Option<u32>> = c
            .nodes
            .iter()
            .map(|n| origin_pid(&n.config().http.to_string()))
            .collect();
        pids.push(Some(std::process::id()));
        let start = pids.iter().map(|p| p.and_then(cpu_ticks)).collect();
        CpuWindow {
            pids,
            start,
            at: Instant::now(),
        }
    }

    /// % of one core per origin (index = node) and, last, of this process.
    fn end(&self, tck: f64) -> Vec<Option<f64>> {
        let secs = self.at.elapsed().as_secs_f64();
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(p, s)| {
                let now = p.and_then(cpu_ticks)?;
                Some((now - (*s)?) as f64 / tck / secs * 100.0)
            })
            .collect()
    }
}

/// What one load phase measured.
struct Phase {
    label: String,
    target: String,
    clients: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: Vec<String>,
    cpu: Vec<Option<f64>>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[i - 1].as_secs_f64() * 1e3
    }
}

struct Bench {
    c: Cluster,
    apis: Vec<Api>,
    scale: f64,
    tck: f64,
}

impl Bench {
    /// `clients` tasks send `op` to node `node` back to back for `secs` (scaled).
    async fn load(&self, label: &str, node: usize, clients: usize, secs: f64, op: Op) -> Phase {
        let dur = Duration::from_secs_f64(secs * self.scale);
        let api = self.apis[node].with_timeout(REQUEST_TIMEOUT);
        let cpu = CpuWindow::begin(&self.c);
        let start = Instant::now();
        let mut tasks = JoinSet::new();
        for client in 0..clients {
            let (api, op) = (api.clone(), op.clone());
            tasks.spawn(async move {
                let (mut ok, mut errs) = (Vec::new(), Vec::new());
                let mut i = 0;
                while start.elapsed() < dur {
                    let t = Instant::now();
                    match op.send(&api, client, i).await {
                        Ok(()) => ok.push(t.elapsed()),
                        Err(e) => errs.push(e),
                    }
                    i += 1;
                }
                (ok, errs)
            });
        }
        let (mut latencies, mut errors) = (Vec::new(), Vec::new());
        while let Some(r) = tasks.join_next().await {
            let (ok, errs) = r.expect("load task");
            latencies.extend(ok);
            errors.extend(errs);
        }
        let elapsed = start.elapsed();
        latencies.sort();
        let phase = Phase {
            label: label.into(),
            target: self.c.nodes[node].name().into(),
            clients,
            elapsed,
            latencies,
            errors,
            cpu: cpu.end(self.tck),
        };
        eprintln!(
            "  {label}: {} ok, {} errors, {:.0}/s",
            phase.latencies.len(),
            phase.errors.len(),
            phase.rate()
        );
        phase
    }

    /// Kills the leader, launches a probe write to a survivor every [`PROBE_EVERY`] until one is
    /// acknowledged; returns (kill to first acknowledgement, acknowledging node, old leader).
    async fn failover_round(&mut self, round: usize) -> Result<(Duration, usize, usize), String> {
        let old = self.c.leader().await;
        let survivors: Vec<usize> = (0..NODES).filter(|&i| i != old).collect();
        let apis: Vec<(usize, Api)> = survivors
            .iter()
            .map(|&i| (i, self.apis[i].with_timeout(PROBE_TIMEOUT)))
            .collect();
        self.c.note(format!("bench: failover round {round}"));
        let kill_at = Instant::now();
        self.c.nodes[old].kill9();
        let mut probes = JoinSet::new();
        let mut n = 0usize;
        let mut tick = tokio::time::interval(PROBE_EVERY);
        let found = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if kill_at.elapsed() > FAILOVER_DEADLINE {
                        break Err(format!("no write acknowledged within {FAILOVER_DEADLINE:?}"));
                    }
                    if probes.len() < MAX_PROBES_IN_FLIGHT {
                        let (node, api) = apis[n % apis.len()].clone();
                        let name = format!("fo{round}-{n}");
                        n += 1;
                        probes.spawn(async move {
                            let r = api.create_app(&name).await;
                            (node, matches!(r, Ok(ref r) if r.status == 201), Instant::now())
                        });
                    }
                }
                Some(Ok((node, true, at))) = probes.join_next(), if !probes.is_empty() => {
                    break Ok((at - kill_at, node, old));
                }
            }
        };
        probes.abort_all();
        found
    }

    /// Restarts `old`, then waits until it acknowledges a write itself and the leader lists all
    /// voters: the next round starts from a whole cluster.
    async fn rejoin(&mut self, old: usize, round: usize) {
        self.c.nodes[old]
            .restart()
            .await
            .unwrap_or_else(|e| panic!("restart {}: {e:#}", self.c.nodes[old].name()));
        let api = self.c.admin(old).await;
        self.apis[old] = api.clone();
        let name = format!("rejoin-{round}");
        poll("a write through the restarted node", REJOIN_TIMEOUT, || {
            let (api, name) = (api.clone(), name.clone());
            async move {
                match api.create_app(&name).await {
                    Ok(r) if matches!(r.status, 201 | 409) => Ok(()),
                    Ok(r) => Err(format!("{r:?}")),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let leader = self.c.leader().await;
        self.c.wait_voters(leader, NODES, REJOIN_TIMEOUT).await;
    }
}

fn fmt_cpu(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.0}%"))
}

fn load_table(phases: &[Phase], baseline_of: &[Option<usize>]) -> String {
    let mut out = String::new();
    out.push_str(
        "| phase | node | clients | secs | ok | errors | ops/s | ÷ baseline | p50 ms | p99 ms | max ms | CPU of the node | CPU of 3 origins | CPU of bench client |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (p, base) in phases.iter().zip(baseline_of) {
        let ratio = base.map_or("—".into(), |b| {
            let b = &phases[b];
            format!("{:.2} ({})", p.rate() / b.rate(), b.label)
        });
        let node = p.cpu.get(node_index(&p.target)).copied().flatten();
        let origins: Option<f64> = p.cpu[..NODES].iter().copied().sum();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {} | {} | {:.0} | {ratio} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            p.label,
            p.target,
            p.clients,
            p.elapsed.as_secs_f64(),
            p.latencies.len(),
            p.errors.len(),
            p.rate(),
            p.pct(0.50),
            p.pct(0.99),
            p.pct(1.0),
            fmt_cpu(node),
            fmt_cpu(origins),
            fmt_cpu(p.cpu[NODES]),
        );
    }
    out
}

/// `origin-<i+1>` -> i.
fn node_index(name: &str) -> usize {
    name.trim_start_matches("origin-")
        .parse::<usize>()
        .map_or(0, |n| n - 1)
}

fn error_summary(phases: &[Phase]) -> String {
    let mut out = String::new();
    for p in phases.iter().filter(|p| !p.errors.is_empty()) {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for e in &p.errors {
            match kinds.iter_mut().find(|(k, _)| k == e) {
                Some((_, n)) => *n += 1,
                None => kinds.push((e.clone(), 1)),
            }
        }
        let _ = writeln!(out, "errors in {}: {kinds:?}", p.label);
    }
    out
}

fn default_origin_bin() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("chaos-tests lives in the workspace root");
    root.join("target/release/streamhub-origin")
        .display()
        .to_string()
}

fn main() -> anyhow::Result<()> {
    let bin = std::env::var("STREAMHUB_ORIGIN_BIN").unwrap_or_else(|_| default_origin_bin());
    anyhow::ensure!(
        Path::new(&bin).exists(),
        "{bin} is missing: cargo build --release -p streamhub-origin"
    );
    // Set before the runtime starts any thread: the harness reads it when it spawns a node.
    std::env::set_var("STREAMHUB_ORIGIN_BIN", &bin);
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(bin, scale))
}

async fn run(bin: String, scale: f64) -> anyhow::Result<()> {
    let seed = chaos_seed();
    let formed = Instant::now();
    let c = Cluster::start(NODES, seed).await;
    eprintln!("cluster formed in {:.1} s", formed.elapsed().as_secs_f64());
    let mut apis = Vec::new();
    for i in 0..NODES {
        apis.push(c.admin(i).await);
    }
    let mut b = Bench {
        c,
        apis,
        scale,
        tck: clk_tck(),
    };
    let leader = b.c.leader().await;
    let follower = (0..NODES).find(|&i| i != leader).expect("a follower");
    let mut phases = Vec::new();
    let create = |prefix| Op::CreateApp { prefix };
    eprintln!(
        "load phases (leader {}, follower {}):",
        b.c.nodes[leader].name(),
        b.c.nodes[follower].name()
    );
    phases.push(
        b.load(
            "write → leader, sequential",
            leader,
            1,
            SEQUENTIAL_SECS,
            create("ls"),
        )
        .await,
    );
    phases.push(
        b.load(
            "write → leader, 16 clients",
            leader,
            CONCURRENCY,
            WRITE_SECS,
            create("lc"),
        )
        .await,
    );
    phases.push(
        b.load(
            "write → follower, sequential",
            follower,
            1,
            SEQUENTIAL_SECS,
            create("fs"),
        )
        .await,
    );
    phases.push(
        b.load(
            "write → follower, 16 clients",
            follower,
            CONCURRENCY,
            WRITE_SECS,
            create("fc"),
        )
        .await,
    );
    let r = b.apis[leader].create_app("tok").await?;
    anyhow::ensure!(r.status == 201, "create app tok: {r:?}");
    // The follower must have applied it before the read-only phases start.
    let have = poll("app tok on the follower", REJOIN_TIMEOUT, || {
        let api = b.apis[follower].clone();
        async move {
            api.get("/apps/tok")
                .await
                .map_err(|e| format!("{e:#}"))
                .and_then(|r| (r.status == 200).then_some(()).ok_or(format!("{r:?}")))
        }
    });
    have.await?;
    let app = || "tok".to_string();
    phases.push(
        b.load(
            "GET /apps/:app (baseline)",
            follower,
            CONCURRENCY,
            TOKEN_SECS,
            Op::GetApp { app: app() },
        )
        .await,
    );
    phases.push(
        b.load(
            "POST /apps/:app/tokens",
            follower,
            CONCURRENCY,
            TOKEN_SECS,
            Op::MintToken { app: app() },
        )
        .await,
    );
    let baselines = [None, None, Some(0), Some(1), None, Some(4)];

    let mut rounds = Vec::new();
    for round in 1..=FAILOVER_ROUNDS {
        match b.failover_round(round).await {
            Ok((t, by, old)) => {
                eprintln!(
                    "  failover {round}: {} ms, first ack by {}",
                    t.as_millis(),
                    b.c.nodes[by].name()
                );
                rounds.push(Ok((t, by, old)));
                b.rejoin(old, round).await;
            }
            Err(e) => {
                eprintln!("  failover {round}: {e}");
                rounds.push(Err(e));
                break;
            }
        }
    }
    print_report(&b, &bin, seed, &phases, &baselines, &rounds);
    Ok(())
}

type Round = Result<(Duration, usize, usize), String>;

fn print_report(
    b: &Bench,
    bin: &str,
    seed: u64,
    phases: &[Phase],
    baselines: &[Option<usize>],
    rounds: &[Round],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("## cluster_bench (seed {seed}, {cores} cores, 3 origins + this client on loopback, scale {})", b.scale);
    println!();
    println!("command: `STREAMHUB_ORIGIN_BIN={bin} CHAOS_SEED={seed} BENCH_SCALE={} cargo run --release -p streamhub-chaos-tests --bin cluster_bench`", b.scale);
    println!();
    print!("{}", load_table(phases, baselines));
    let tok = &phases[5];
    if let Some(cpu) = tok.cpu.get(node_index(&tok.target)).copied().flatten() {
        println!();
        println!(
            "tokens: {:.0}/s on {}, which used {:.0}% of a core → {:.0} tokens per second per core of server CPU (GET baseline: {:.0} per core-second)",
            tok.rate(),
            tok.target,
            cpu,
            tok.rate() / (cpu / 100.0),
            phases[4].rate() / (phases[4].cpu[node_index(&phases[4].target)].unwrap_or(f64::NAN) / 100.0),
        );
    }
    println!();
    println!(
        "| failover round | killed leader | first write acked by | kill → first acked write ms |"
    );
    println!("|---:|---|---|---:|");
    let mut ok = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        match r {
            Ok((t, by, old)) => {
                ok.push(*t);
                println!(
                    "| {} | {} | {} | {} |",
                    i + 1,
                    b.c.nodes[*old].name(),
                    b.c.nodes[*by].name(),
                    t.as_millis()
                );
            }
            Err(e) => println!("| {} | — | — | failed: {e} |", i + 1),
        }
    }
    ok.sort();
    if let (Some(p50), Some(max)) = (ok.get((ok.len().max(1) - 1) / 2), ok.last()) {
        println!();
        println!("failover: p50 {} ms, max {} ms over {} rounds (election timeout 0.5–1 s, heartbeat 100 ms)", p50.as_millis(), max.as_millis(), ok.len());
    }
    let errors = error_summary(phases);
    if !errors.is_empty() {
        println!();
        print!("{errors}");
    }
}
