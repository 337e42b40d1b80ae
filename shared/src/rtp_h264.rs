//! H.264 over RTP (RFC 6184, packetization-mode 1), sans-IO: a packetizer from our AVCC access
//! units to RTP payloads and a depacketizer from RTP payloads back to access units.
//!
//! The packetizer sends small NAL units as they are (single NAL unit packets), aggregates the
//! parameter sets in front of a keyframe into one STAP-A, and splits NAL units larger than the
//! MTU into FU-A fragments. The depacketizer takes single NAL units, STAP-A and FU-A, drops a
//! fragmented NAL unit whose fragments did not all arrive, and bounds what it buffers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::h264::{avcc_nalus, AvcConfig};

/// NAL unit types (the low 5 bits of the first byte).
pub mod nal {
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
    pub const STAP_A: u8 = 24;
    pub const FU_A: u8 = 28;
}

/// Largest access unit the depacketizer assembles (a 4K keyframe fits well below it).
pub const MAX_ACCESS_UNIT: usize = 4 * 1024 * 1024;

/// The type of a NAL unit.
pub fn nal_type(nalu: &[u8]) -> u8 {
    nalu.first().map_or(0, |b| b & 0x1f)
}

/// Splits one access unit into RTP payloads no larger than `mtu` bytes (the marker bit goes on
/// the last one). With `params`, the SPS and PPS are sent first as one STAP-A (browsers need them
/// in band before each keyframe; our frames carry them out of band, in the track's `avcC`).
pub fn packetize(
    access_unit: &[u8],
    nal_length_size: u8,
    params: Option<&AvcConfig>,
    mtu: usize,
) -> Vec<Bytes> {
    let mtu = mtu.max(16);
    let mut out = Vec::new();
    if let Some(cfg) = params {
        let sets: Vec<&[u8]> = cfg
            .sps
            .iter()
            .chain(cfg.pps.iter())
            .map(|b| &b[..])
            .filter(|n| !n.is_empty())
            .collect();
        let size = 1 + sets.iter().map(|n| 2 + n.len()).sum::<usize>();
        if size <= mtu && !sets.is_empty() {
            let mut stap = BytesMut::with_capacity(size);
            // F=0, NRI = the highest NRI of the aggregated units (RFC 6184 5.7.1).
            let nri = sets.iter().map(|n| n[0] & 0x60).max().unwrap_or(0x60);
            stap.put_u8(nri | nal::STAP_A);
            for n in &sets {
                stap.put_u16(n.len() as u16);
                stap.put_slice(n);
            }
            out.push(stap.freeze());
        } else {
            for n in sets {
                push_nalu(&mut out, n, mtu);
            }
        }
    }
    for nalu in avcc_nalus(access_unit, nal_length_size) {
        match nal_type(nalu) {
            // Access unit delimiters carry nothing a receiver needs; parameter sets inside the
            // frame go as they are.
            nal::AUD => {}
            _ if nalu.is_empty() => {}
            _ => push_nalu(&mut out, nalu, mtu),
        }
    }
    out
}

fn push_nalu(out: &mut Vec<Bytes>, nalu: &[u8], mtu: usize) {
    if nalu.len() <= mtu {
        out.push(Bytes::copy_from_slice(nalu));
        return;
    }
    // FU-A: indicator (F, NRI, type 28), header (S, E, R, type), then a slice of the payload.
    let indicator = (nalu[0] & 0xe0) | nal::FU_A;
    let typ = nalu[0] & 0x1f;
    let body = &nalu[1..];
    let chunk = mtu - 2;
    let count = body.len().div_ceil(chunk);
    for (i, part) in body.chunks(chunk).enumerate() {
        let mut b = BytesMut::with_capacity(2 + part.len());
        b.put_u8(indicator);
        let mut header = typ;
        if i == 0 {
            header |= 0x80;
        }
        if i + 1 == count {
            header |= 0x40;
        }
        b.put_u8(header);
        b.put_slice(part);
        out.push(b.freeze());
    }
}

/// Why a payload was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepacketizeError {
    #[error("empty RTP payload")]
    Empty,
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("unsupported NAL unit type {0} (packetization-mode 1 carries 1-23, 24, 28)")]
    Unsupported(u8),
    #[error("access unit over {MAX_ACCESS_UNIT} bytes")]
    TooLarge,
}

/// Reassembles access units from the RTP payloads of one H.264 stream.
///
/// Feed every packet in sequence order with [`push`](Self::push); an access unit is complete at
/// the packet with the marker bit, or when the timestamp changes. Lost packets (a sequence gap)
/// poison the access unit being assembled: it is dropped, and the stream resumes at the next
/// keyframe (the caller asks the sender for one).
#[derive(Debug, Default)]
pub struct Depacketizer {
    nalus: Vec<Bytes>,
    size: usize,
    fu: Option<BytesMut>,
    timestamp: Option<u32>,
    last_seq: Option<u16>,
    broken: bool,
    /// Set after a loss until the next keyframe.
    need_keyframe: bool,
}

/// One reassembled access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// RTP timestamp (90 kHz).
    pub timestamp: u32,
    /// Its NAL units, without start codes or length prefixes.
    pub nalus: Vec<Bytes>,
    /// It holds an IDR slice.
    pub keyframe: bool,
}

impl AccessUnit {
    /// The access unit as AVCC with 4-byte lengths, without parameter sets and delimiters.
    pub fn to_avcc(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.nalus.iter().map(|n| n.len() + 4).sum());
        for n in &self.nalus {
            if matches!(nal_type(n), nal::SPS | nal::PPS | nal::AUD) {
                continue;
            }
            b.put_u32(n.len() as u32);
            b.put_slice(n);
        }
        b.freeze()
    }

    /// The first SPS and PPS in the access unit, if both are there.
    pub fn parameter_sets(&self) -> Option<(Bytes, Bytes)> {
        let sps = self.nalus.iter().find(|n| nal_type(n) == nal::SPS)?;
        let pps = self.nalus.iter().find(|n| nal_type(n) == nal::PPS)?;
        Some((sps.clone(), pps.clone()))
    }
}

impl Depacketizer {
    /// True while the stream waits for a keyframe after a loss (ask the sender for one).
    pub fn needs_keyframe(&self) -> bool {
        self.need_keyframe
    }

    /// Takes one RTP packet; returns the access units it completes (the previous one, if its
    /// marker packet was lost, and this one with `marker`), in order.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<Vec<AccessUnit>, DepacketizeError> {
        let mut done = Vec::new();
        if self.timestamp.is_some_and(|t| t != timestamp) {
            // The previous access unit ended without a marker (the marker packet was lost).
            done.extend(self.finish());
        }
        if let Some(last) = self.last_seq {
            if seq != last.wrapping_add(1) {
                self.broken = true;
                self.fu = None;
            }
        }
        self.last_seq = Some(seq);
        self.timestamp = Some(timestamp);
        let r = self.take(payload);
        if r.is_err() {
            self.broken = true;
            self.fu = None;
        }
        if marker {
            done.extend(self.finish());
        }
        r.map(|()| done)
    }

    fn take(&mut self, payload: &[u8]) -> Result<(), DepacketizeError> {
        let first = *payload.first().ok_or(DepacketizeError::Empty)?;
        match first & 0x1f {
            1..=23 => {
                self.fu = None;
                self.add(Bytes::copy_from_slice(payload))
            }
            nal::STAP_A => {
                let mut rest = &payload[1..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(DepacketizeError::Truncated("STAP-A size"));
                    }
                    let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                    let n = rest
                        .get(2..2 + len)
                        .ok_or(DepacketizeError::Truncated("STAP-A unit"))?;
                    if !n.is_empty() {
                        self.add(Bytes::copy_from_slice(n))?;
                    }
                    rest = &rest[2 + len..];
                }
                Ok(())
            }
            nal::FU_A => {
                let header = *payload
                    .get(1)
                    .ok_or(DepacketizeError::Truncated("FU-A header"))?;
                let (start, end) = (header & 0x80 != 0, header & 0x40 != 0);
                if start {
                    let mut b = BytesMut::with_capacity(payload.len() * 8);
                    b.put_u8((first & 0xe0) | (header & 0x1f));
                    b.put_slice(&payload[2..]);
                    self.fu = Some(b);
                } else if let Some(b) = self.fu.as_mut() {
                    if b.len() + payload.len() > MAX_ACCESS_UNIT {
                        self.fu = None;
                        return Err(DepacketizeError::TooLarge);
                    }
                    b.put_slice(&payload[2..]);
                } else {
                    // A middle or end fragment without its start: lost with it.
                    self.broken = true;
                    return Ok(());
                }
                if end {
                    if let Some(b) = self.fu.take() {
                        self.add(b.freeze())?;
                    }
                }
                Ok(())
            }
            t => Err(DepacketizeError::Unsupported(t)),
        }
    }

    fn add(&mut self, nalu: Bytes) -> Result<(), DepacketizeError> {
        if self.size + nalu.len() > MAX_ACCESS_UNIT {
            return Err(DepacketizeError::TooLarge);
        }
        self.size += nalu.len();
        self.nalus.push(nalu);
        Ok(())
    }

    fn finish(&mut self) -> Option<AccessUnit> {
        let nalus = std::mem::take(&mut self.nalus);
        let timestamp = self.timestamp.take()?;
        let broken = std::mem::replace(&mut self.broken, false) || self.fu.take().is_some();
        self.size = 0;
        let keyframe = nalus.iter().any(|n| nal_type(n) == nal::IDR);
        if broken {
            self.need_keyframe = true;
            return None;
        }
        if self.need_keyframe && !keyframe {
            return None;
        }
        let has_slice = nalus.iter().any(|n| (1..=5).contains(&nal_type(n)));
        if !has_slice {
            // Parameter sets or SEI alone: keep them for the access unit they belong to.
            if nalus
                .iter()
                .any(|n| matches!(nal_type(n), nal::SPS | nal::PPS))
            {
                self.nalus = nalus;
                self.size = self.nalus.iter().map(|n| n.len()).sum();
            }
            return None;
        }
        self.need_keyframe = false;
        Some(AccessUnit {
            timestamp,
            nalus,
            keyframe,
        })
    }
}

/// An `avcC` record (AVCDecoderConfigurationRecord) for one SPS and PPS, 4-byte NALU lengths.
pub fn avcc_record(sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    if sps.len() < 4 || pps.is_empty() || sps.len() > 0xffff || pps.len() > 0xffff {
        return None;
    }
    let mut b = BytesMut::with_capacity(11 + sps.len() + pps.len());
    b.put_u8(1);
    b.put_u8(sps[1]); // profile_idc
    b.put_u8(sps[2]); // constraint flags
    b.put_u8(sps[3]); // level_idc
    b.put_u8(0xfc | 3); // 4-byte lengths
    b.put_u8(0xe0 | 1);
    b.put_u16(sps.len() as u16);
    b.put_slice(sps);
    b.put_u8(1);
    b.put_u16(pps.len() as u16);
    b.put_slice(pps);
    Some(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avcc(nalus: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nalus {
            v.extend_from_slice(&(n.len() as u32).to_be_bytes());
            v.extend_from_slice(n);
        }
        v
    }

    fn config() -> AvcConfig {
        AvcConfig {
            profile: 0x42,
            compatibility: 0xe0,
            level: 0x1f,
            nal_length_size: 4,
            sps: vec![Bytes::from_static(&[0x67, 0x42, 0xe0, 0x1f, 0xaa])],
            pps: vec![Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80])],
        }
    }

    #[test]
    fn keyframe_gets_parameter_sets_as_one_stap_a() {
        let idr = [0x65, 1, 2, 3];
        let p = packetize(&avcc(&[&idr]), 4, Some(&config()), 1200);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0][0] & 0x1f, nal::STAP_A);
        assert_eq!(&p[0][1..3], &[0, 5]);
        assert_eq!(&p[0][3..8], &[0x67, 0x42, 0xe0, 0x1f, 0xaa]);
        assert_eq!(&p[0][8..10], &[0, 4]);
        assert_eq!(&p[0][10..], &[0x68, 0xce, 0x3c, 0x80]);
        assert_eq!(&p[1][..], &idr);
    }

    #[test]
    fn large_nalu_is_split_into_fu_a_with_start_and_end_bits() {
        let mut big = vec![0x65u8];
        big.extend((0..3000u32).map(|i| i as u8));
        let p = packetize(&avcc(&[&big, &[0x06, 9]]), 4, None, 1000);
        // 2999 payload bytes... 3000 body bytes / 998 per fragment = 4 fragments, then the SEI.
        assert_eq!(p.len(), 5);
        for (i, f) in p[..4].iter().enumerate() {
            assert!(f.len() <= 1000);
            assert_eq!(f[0], 0x60 | nal::FU_A, "indicator keeps F and NRI");
            assert_eq!(f[1] & 0x1f, nal::IDR);
            assert_eq!(f[1] & 0x80 != 0, i == 0, "start bit");
            assert_eq!(f[1] & 0x40 != 0, i == 3, "end bit");
        }
        let body: Vec<u8> = p[..4].iter().flat_map(|f| f[2..].to_vec()).collect();
        assert_eq!(body, big[1..]);
        assert_eq!(&p[4][..], &[0x06, 9]);
    }

    #[test]
    fn delimiters_are_not_sent() {
        let p = packetize(&avcc(&[&[0x09, 0xf0], &[0x41, 7]]), 4, None, 1200);
        assert_eq!(p, vec![Bytes::from_static(&[0x41, 7])]);
    }

    fn roundtrip(au: &[u8], params: Option<&AvcConfig>, mtu: usize) -> Vec<AccessUnit> {
        let payloads = packetize(au, 4, params, mtu);
        let mut d = Depacketizer::default();
        let mut out = Vec::new();
        let n = payloads.len();
        for (i, p) in payloads.iter().enumerate() {
            out.extend(d.push(100 + i as u16, 9000, i + 1 == n, p).unwrap());
        }
        out
    }

    #[test]
    fn depacketizer_reassembles_what_the_packetizer_made() {
        let mut big = vec![0x65u8];
        big.extend((0..5000u32).map(|i| (i * 7) as u8));
        let au = avcc(&[&[0x06, 1, 2], &big]);
        let out = roundtrip(&au, Some(&config()), 1200);
        assert_eq!(out.len(), 1);
        let a = &out[0];
        assert!(a.keyframe);
        assert_eq!(a.timestamp, 9000);
        let (sps, pps) = a.parameter_sets().unwrap();
        assert_eq!(&sps[..], &config().sps[0][..]);
        assert_eq!(&pps[..], &config().pps[0][..]);
        assert_eq!(&a.to_avcc()[..], &au[..], "AVCC without the parameter sets");
    }

    #[test]
    fn a_lost_fragment_drops_the_frame_until_the_next_keyframe() {
        let mut big = vec![0x65u8];
        big.extend(std::iter::repeat_n(3u8, 4000));
        let key = packetize(&avcc(&[&big]), 4, None, 1200);
        let delta = packetize(&avcc(&[&[0x41, 1, 2]]), 4, None, 1200);
        let mut d = Depacketizer::default();
        let mut seq = 0u16;
        // Keyframe with its second fragment lost.
        for (i, p) in key.iter().enumerate() {
            seq += 1;
            if i == 1 {
                continue;
            }
            assert_eq!(d.push(seq, 0, i + 1 == key.len(), p).unwrap(), vec![]);
        }
        assert!(d.needs_keyframe());
        // A delta frame after the loss is of no use either.
        seq += 1;
        assert_eq!(d.push(seq, 3000, true, &delta[0]).unwrap(), vec![]);
        // The next whole keyframe comes through.
        for (i, p) in key.iter().enumerate() {
            seq += 1;
            let r = d.push(seq, 6000, i + 1 == key.len(), p).unwrap();
            assert_eq!(r.len(), usize::from(i + 1 == key.len()));
        }
        assert!(!d.needs_keyframe());
        seq += 1;
        assert_eq!(d.push(seq, 9000, true, &delta[0]).unwrap().len(), 1);
    }

    #[test]
    fn a_missing_marker_ends_the_unit_at_the_next_timestamp() {
        let mut d = Depacketizer::default();
        assert_eq!(d.push(1, 0, false, &[0x65, 1]).unwrap(), vec![]);
        let a = d.push(2, 3000, true, &[0x41, 2]).unwrap();
        assert_eq!(a.len(), 2, "the unit without its marker, then this one");
        assert_eq!(a[0].timestamp, 0);
        assert!(a[0].keyframe);
        assert_eq!(a[1].timestamp, 3000);
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let mut d = Depacketizer::default();
        assert_eq!(d.push(1, 0, true, &[]), Err(DepacketizeError::Empty));
        assert!(matches!(
            d.push(2, 0, true, &[nal::STAP_A, 0, 9, 1]),
            Err(DepacketizeError::Truncated(_))
        ));
        assert!(matches!(
            d.push(3, 0, true, &[nal::FU_A]),
            Err(DepacketizeError::Truncated(_))
        ));
        assert_eq!(
            d.push(4, 0, true, &[29, 0]),
            Err(DepacketizeError::Unsupported(29))
        );
    }

    #[test]
    fn avcc_record_parses_back() {
        let rec = avcc_record(&config().sps[0], &config().pps[0]).unwrap();
        let parsed = AvcConfig::parse(&rec).unwrap();
        assert_eq!(parsed.profile, 0x42);
        assert_eq!(parsed.nal_length_size, 4);
        assert_eq!(parsed.sps, config().sps);
        assert_eq!(parsed.pps, config().pps);
    }
}
