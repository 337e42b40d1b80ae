//! What the ingest guards added for the public surface cost on the hot path, side by side with
//! the parsing each one sits in front of, in one process. Best of 5 runs, reported as time per
//! second of stream and as the ratio to the baseline:
//!
//! - RTMP: [`ChunkWatch`] (every message's declared length checked before rml_rtmp buffers it)
//!   against rml_rtmp's own `ChunkDeserializer` on the same bytes: 60 s of a 2.5 Mb/s stream
//!   (30 fps video with a 100 KB keyframe every 2 s, 47 AAC frames a second), at chunk size 4096
//!   (what OBS and ffmpeg set) and 128 (the protocol's default, the most headers per byte).
//! - SRT: `srt_tokio::parse_datagram` (the screen, then the parse under `catch_unwind`) against
//!   srt-protocol's `Packet::parse` alone: 60 s of the same stream as 1316-byte data packets, one
//!   ACK every 10 ms.
//!
//! ```sh
//! cargo bench -p streamhub-origin --bench ingest_guards
//! ```

use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::time::RtmpTimestamp;
use streamhub_origin::rtmp::chunks::ChunkWatch;

const SECONDS: u32 = 60;
const BITRATE: usize = 2_500_000;
const MAX_MESSAGE: usize = 8 << 20;

fn best(mut run: impl FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .min()
        .unwrap()
}

fn message(type_id: u8, len: usize, ts: u32) -> MessagePayload {
    let mut m = MessagePayload::new();
    m.type_id = type_id;
    m.timestamp = RtmpTimestamp::new(ts);
    m.message_stream_id = 1;
    m.data = Bytes::from(vec![0x5a; len]);
    m
}

/// The stream as an encoder writes it with rml_rtmp's serializer, in 1460-byte reads.
fn rtmp_stream(chunk_size: u32) -> Vec<Vec<u8>> {
    let mut ser = ChunkSerializer::new();
    let mut bytes = Vec::new();
    if chunk_size != 128 {
        let p = ser
            .set_max_chunk_size(chunk_size, RtmpTimestamp::new(0))
            .unwrap();
        bytes.extend_from_slice(&p.bytes);
    }
    let delta = BITRATE / 8 / 30 - 100_000 / 60;
    for frame in 0..SECONDS * 30 {
        let ts = frame * 1000 / 30;
        let len = if frame % 60 == 0 { 100_000 } else { delta };
        let p = ser.serialize(&message(9, len, ts), false, false).unwrap();
        bytes.extend_from_slice(&p.bytes);
        for a in 0..2 {
            let p = ser
                .serialize(&message(8, 340, ts + a * 21), false, false)
                .unwrap();
            bytes.extend_from_slice(&p.bytes);
        }
    }
    bytes.chunks(1460).map(<[u8]>::to_vec).collect()
}

fn deserialize(reads: &[Vec<u8>], chunk_size: u32) -> usize {
    let mut de = ChunkDeserializer::new();
    let mut messages = 0;
    for read in reads {
        let mut input: &[u8] = read;
        while let Some(m) = de.get_next_message(input).unwrap() {
            if m.type_id == 1 {
                de.set_max_chunk_size(chunk_size as usize).unwrap();
            }
            messages += 1;
            input = &[];
        }
    }
    messages
}

fn watch(reads: &[Vec<u8>]) {
    let mut w = ChunkWatch::default();
    for read in reads {
        w.feed(black_box(read), MAX_MESSAGE).unwrap();
    }
}

/// 60 s of the stream as SRT data packets (1316-byte payloads), an ACK every 10 ms.
fn srt_datagrams() -> Vec<Vec<u8>> {
    let packets = SECONDS as usize * BITRATE / 8 / 1316;
    let acks = SECONDS as usize * 100;
    let mut out = Vec::with_capacity(packets + acks);
    for seq in 0..packets as u32 {
        let mut d = Vec::with_capacity(16 + 1316);
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&(0xc000_0000u32 | seq).to_be_bytes());
        d.extend_from_slice(&(seq * 4000).to_be_bytes());
        d.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        d.resize(16 + 1316, 0x47);
        out.push(d);
        if (seq as usize).is_multiple_of((packets / acks).max(1)) {
            let mut a = vec![0x80, 0x02, 0, 0];
            a.extend_from_slice(&(seq + 1).to_be_bytes());
            a.extend_from_slice(&(seq * 4000).to_be_bytes());
            a.extend_from_slice(&0x8765_4321u32.to_be_bytes());
            for word in [seq, 20_000, 5_000, 8192, 1000, 100_000, 1000] {
                a.extend_from_slice(&word.to_be_bytes());
            }
            out.push(a);
        }
    }
    out
}

fn main() {
    println!("| guard | baseline (what it sits in front of) | per s of stream: baseline / with the guard | guard / baseline |");
    println!("|---|---|---|---|");
    for chunk_size in [4096u32, 128] {
        let reads = rtmp_stream(chunk_size);
        assert!(deserialize(&reads, chunk_size) >= (SECONDS * 90) as usize);
        watch(&reads);
        let base = best(|| {
            black_box(deserialize(&reads, chunk_size));
        });
        let guard = best(|| watch(&reads));
        println!(
            "| RTMP `ChunkWatch`, chunk size {chunk_size} | rml_rtmp `ChunkDeserializer` | {:.1} µs / {:.1} µs | {:.3} |",
            base.as_secs_f64() * 1e6 / f64::from(SECONDS),
            guard.as_secs_f64() * 1e6 / f64::from(SECONDS),
            guard.as_secs_f64() / base.as_secs_f64(),
        );
    }
    let datagrams = srt_datagrams();
    for d in &datagrams {
        srt_tokio::parse_datagram(d, false).unwrap();
    }
    let base = best(|| {
        for d in &datagrams {
            black_box(
                srt_protocol::packet::Packet::parse(&mut Cursor::new(black_box(d)), false).unwrap(),
            );
        }
    });
    let guarded = best(|| {
        for d in &datagrams {
            black_box(srt_tokio::parse_datagram(black_box(d), false).unwrap());
        }
    });
    println!(
        "| SRT screen + `catch_unwind` | srt-protocol `Packet::parse` | {:.1} µs / {:.1} µs | {:.3} |",
        base.as_secs_f64() * 1e6 / f64::from(SECONDS),
        guarded.as_secs_f64() * 1e6 / f64::from(SECONDS),
        guarded.as_secs_f64() / base.as_secs_f64(),
    );
}
