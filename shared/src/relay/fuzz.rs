//! Property tests of both relay decoders (proptest: failing inputs are shrunk to a minimal
//! counterexample): random bytes and mutated valid encodings, fed whole and in random chunks.
//! Nothing panics, chunking never changes the outcome, and whatever is accepted re-encodes to
//! the same thing.

use bytes::{BufMut, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use super::control::tests::samples;
use super::group::tests::{encode_group, frames, header};
use super::*;

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

/// Feeds `input` in chunks of the sizes in `sizes` (cycled; empty means whole) and drains the
/// decoder after each one.
fn run<T>(
    input: &[u8],
    sizes: &[usize],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, RelayError>,
) -> Outcome<T> {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut at = 0;
    let mut next = sizes.iter().copied().cycle();
    while at < input.len() {
        let n = next.next().unwrap_or(usize::MAX).clamp(1, input.len() - at);
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

/// One change to a valid encoding.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
    /// Overwrite four bytes with a big-endian length-like value: small, at a bound, huge.
    Length(Index, u32),
    Append(Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let lengths = vec![
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
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<Index>().prop_map(Edit::Remove),
        any::<Index>().prop_map(Edit::Truncate),
        (any::<Index>(), select(lengths)).prop_map(|(i, v)| Edit::Length(i, v)),
        vec(any::<u8>(), 0..8).prop_map(Edit::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Flip(i, b) if len > 0 => bytes[i.index(len)] ^= 1 << b,
            Edit::Set(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Edit::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            Edit::Remove(i) if len > 0 => drop(bytes.remove(i.index(len))),
            Edit::Truncate(i) => bytes.truncate(i.index(len + 1)),
            Edit::Length(i, v) if len >= 4 => {
                let at = i.index(len - 3);
                bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            Edit::Append(more) => bytes.extend_from_slice(more),
            _ => {}
        }
    }
    bytes
}

/// Random bytes, often starting with one of the valid type bytes `first`, so the decoder gets
/// past its first check.
fn random_bytes(first: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    (vec(any::<u8>(), 0..80), select(first), any::<bool>()).prop_map(|(mut b, t, typed)| {
        if typed && !b.is_empty() {
            b[0] = t;
        }
        b
    })
}

fn valid_control() -> impl Strategy<Value = Vec<u8>> {
    vec(select(samples()), 1..=3).prop_map(|messages| {
        let mut buf = BytesMut::new();
        for m in &messages {
            m.encode(&mut buf).unwrap();
        }
        buf.to_vec()
    })
}

fn valid_group() -> impl Strategy<Value = Vec<u8>> {
    vec(select(frames()), 0..4).prop_map(|picked| encode_group(&header(), &picked).to_vec())
}

fn control_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        random_bytes(vec![0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13]),
        (valid_control(), vec(edit(), 1..=5)).prop_map(|(b, e)| apply(b, &e)),
    ]
}

fn group_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        random_bytes(vec![0x20]),
        (valid_group(), vec(edit(), 1..=5)).prop_map(|(b, e)| apply(b, &e)),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 8192,
        // Regressions found here are added as plain tests beside the decoders.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn control_decoding_ignores_chunking_and_round_trips(
        input in control_input(),
        sizes in vec(1usize..=16, 1..64),
    ) {
        let mut d = ControlDecoder::new();
        let whole = run(&input, &[], |b| d.decode(b));
        let mut d = ControlDecoder::new();
        let chunked = run(&input, &sizes, |b| d.decode(b));
        prop_assert_eq!(&whole, &chunked);
        for m in &whole.items {
            let mut buf = BytesMut::new();
            m.encode(&mut buf).expect("an accepted message re-encodes");
            let back = ControlDecoder::new().decode(&mut buf).unwrap();
            prop_assert_eq!(back.as_ref(), Some(m));
        }
    }

    #[test]
    fn group_decoding_ignores_chunking_and_is_canonical(
        input in group_input(),
        sizes in vec(1usize..=32, 1..64),
    ) {
        let mut d = GroupDecoder::new();
        let whole = run(&input, &[], |b| d.decode(b));
        let _ = d.finish(&BytesMut::from(&whole.left[..]));
        let mut d = GroupDecoder::new();
        let chunked = run(&input, &sizes, |b| d.decode(b));
        prop_assert_eq!(&whole, &chunked);
        // The group encoding is canonical: what was accepted re-encodes to the bytes consumed.
        let mut again = BytesMut::new();
        for item in &whole.items {
            match item {
                GroupItem::Header(h) => h.encode(&mut again),
                GroupItem::Frame(f) => encode_frame(f, &mut again).unwrap(),
            }
        }
        prop_assert_eq!(&again[..], &input[..again.len()]);
    }

    #[test]
    fn unmutated_control_streams_decode_to_what_was_encoded(
        input in valid_control(),
        sizes in vec(1usize..=7, 1..16),
    ) {
        let mut d = ControlDecoder::new();
        let out = run(&input, &sizes, |b| d.decode(b));
        prop_assert!(out.error.is_none() && out.left.is_empty());
        let mut again = BytesMut::new();
        out.items.iter().for_each(|m| m.encode(&mut again).unwrap());
        prop_assert_eq!(&again[..], &input[..]);
    }
}

/// The generated inputs reach past the decoders' first checks often enough to prove something.
#[test]
fn the_inputs_reach_the_decoders() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut control_ok, mut group_ok) = (0, 0);
    for _ in 0..2000 {
        let c = control_input().new_tree(&mut runner).unwrap().current();
        control_ok += usize::from(ControlDecoder::new().decode(&mut c[..].into()).is_ok());
        let g = group_input().new_tree(&mut runner).unwrap().current();
        group_ok += usize::from(GroupDecoder::new().decode(&mut g[..].into()).is_ok());
    }
    assert!(
        control_ok > 100,
        "only {control_ok} control inputs got past decode"
    );
    assert!(
        group_ok > 100,
        "only {group_ok} group inputs got past decode"
    );
}
