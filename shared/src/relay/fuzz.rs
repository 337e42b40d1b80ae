//! A deterministic fuzz loop over both decoders (no cargo-fuzz needed): random bytes and mutated
//! valid encodings, fed whole and in random chunks. It checks that nothing panics, that chunking
//! never changes the outcome, and that whatever is accepted re-encodes to the same thing.

use bytes::{BufMut, BytesMut};

use super::control::tests::samples;
use super::group::tests::{encode_group, frames, header};
use super::*;

const ITERATIONS: usize = 50_000;

/// xorshift64: tiny, deterministic, good enough to pick bytes and positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Everything a decoder produced from one input, to compare whole against chunked feeding.
#[derive(Debug)]
struct Outcome<T> {
    items: Vec<T>,
    error: Option<RelayError>,
    /// What the decoder left in the buffer; only comparable when there was no error, since an
    /// error stops the feeding wherever the chunking happened to be.
    left: Vec<u8>,
}

impl<T: PartialEq> PartialEq for Outcome<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
            && self.error == other.error
            && (self.error.is_some() || self.left == other.left)
    }
}

/// Feeds `input` in chunks whose sizes come from `chunk` and drains the decoder after each one.
fn run<T>(
    input: &[u8],
    mut chunk: impl FnMut() -> usize,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, RelayError>,
) -> Outcome<T> {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let n = chunk().clamp(1, input.len() - at);
        buf.put_slice(&input[at..at + n]);
        at += n;
        loop {
            match decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        items,
                        error: Some(error),
                        left: buf.to_vec(),
                    };
                }
            }
        }
    }
    Outcome {
        items,
        error: None,
        left: buf.to_vec(),
    }
}

fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        let at = rng.below(bytes.len().max(1));
        match rng.below(7) {
            0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
            1 if !bytes.is_empty() => bytes[at] = rng.byte(),
            2 => bytes.insert(at.min(bytes.len()), rng.byte()),
            3 if !bytes.is_empty() => drop(bytes.remove(at)),
            4 => bytes.truncate(at),
            // Overwrite four bytes with a big-endian length-like value: small, at a bound, huge.
            5 if bytes.len() >= at + 4 => {
                let v = [
                    0u32,
                    1,
                    8,
                    255,
                    1 << 20,
                    (1 << 20) + 1,
                    8 << 20,
                    (8 << 20) + 1,
                    u32::MAX,
                ];
                bytes[at..at + 4].copy_from_slice(&v[rng.below(v.len())].to_be_bytes());
            }
            _ => bytes.extend((0..rng.below(8)).map(|_| rng.byte())),
        }
    }
    bytes
}

fn random_bytes(rng: &mut Rng, first: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..rng.below(80)).map(|_| rng.byte()).collect();
    // Half the time start with a valid type byte so the fuzz gets past the first check.
    if !bytes.is_empty() && rng.below(2) == 0 {
        bytes[0] = first[rng.below(first.len())];
    }
    bytes
}

fn valid_control(rng: &mut Rng) -> Vec<u8> {
    let all = samples();
    let mut buf = BytesMut::new();
    for _ in 0..=rng.below(3) {
        all[rng.below(all.len())].encode(&mut buf).unwrap();
    }
    buf.to_vec()
}

fn valid_group(rng: &mut Rng) -> Vec<u8> {
    let all = frames();
    let picked: Vec<_> = (0..rng.below(4))
        .map(|_| all[rng.below(all.len())].clone())
        .collect();
    encode_group(&header(), &picked).to_vec()
}

fn check_control(rng: &mut Rng, input: &[u8]) {
    let mut d = ControlDecoder::new();
    let whole = run(input, || usize::MAX, |b| d.decode(b));
    let mut d = ControlDecoder::new();
    let mut sizes = Rng(rng.next() | 1);
    let chunked = run(input, || 1 + sizes.below(16), |b| d.decode(b));
    assert_eq!(whole, chunked, "input {input:02x?}");
    for m in &whole.items {
        let mut buf = BytesMut::new();
        m.encode(&mut buf).expect("an accepted message re-encodes");
        assert_eq!(
            ControlDecoder::new().decode(&mut buf).unwrap().as_ref(),
            Some(m)
        );
    }
}

fn check_group(rng: &mut Rng, input: &[u8]) {
    let mut d = GroupDecoder::new();
    let whole = run(input, || usize::MAX, |b| d.decode(b));
    let _ = d.finish(&BytesMut::from(&whole.left[..]));
    let mut d = GroupDecoder::new();
    let mut sizes = Rng(rng.next() | 1);
    let chunked = run(input, || 1 + sizes.below(32), |b| d.decode(b));
    assert_eq!(whole, chunked, "input {input:02x?}");
    // The group encoding is canonical: what was accepted re-encodes to the bytes consumed.
    let mut again = BytesMut::new();
    for item in &whole.items {
        match item {
            GroupItem::Header(h) => h.encode(&mut again),
            GroupItem::Frame(f) => encode_frame(f, &mut again).unwrap(),
        }
    }
    assert_eq!(&again[..], &input[..again.len()]);
}

#[test]
fn decoders_survive_random_and_mutated_input() {
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let control_types = [0x01, 0x02, 0x10, 0x11, 0x12, 0x13];
    let (mut control_ok, mut group_ok) = (0, 0);
    for i in 0..ITERATIONS {
        let input = match i % 4 {
            0 => random_bytes(&mut rng, &control_types),
            1 => {
                let valid = valid_control(&mut rng);
                mutate(&mut rng, valid)
            }
            2 => random_bytes(&mut rng, &[0x20]),
            _ => {
                let valid = valid_group(&mut rng);
                mutate(&mut rng, valid)
            }
        };
        if i % 4 < 2 {
            check_control(&mut rng, &input);
            control_ok += usize::from(ControlDecoder::new().decode(&mut input[..].into()).is_ok());
        } else {
            check_group(&mut rng, &input);
            group_ok += usize::from(GroupDecoder::new().decode(&mut input[..].into()).is_ok());
        }
    }
    // The loop must reach past the first checks, or it proves little.
    assert!(
        control_ok > ITERATIONS / 20,
        "only {control_ok} control inputs got past decode"
    );
    assert!(
        group_ok > ITERATIONS / 20,
        "only {group_ok} group inputs got past decode"
    );
}

#[test]
fn unmutated_streams_decode_to_what_was_encoded() {
    let mut rng = Rng(42);
    for _ in 0..1000 {
        let input = valid_control(&mut rng);
        let mut d = ControlDecoder::new();
        let out = run(&input, || 1 + rng.below(7), |b| d.decode(b));
        assert!(out.error.is_none() && out.left.is_empty());
        let mut again = BytesMut::new();
        out.items.iter().for_each(|m| m.encode(&mut again).unwrap());
        assert_eq!(&again[..], &input[..]);
    }
}
