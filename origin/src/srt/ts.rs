//! An MPEG-TS demuxer for ingest, sans-IO: 188-byte packets in, H.264 access units and AAC
//! (ADTS) frames out, with their 90 kHz timestamps.
//!
//! It reads what encoders send over SRT: one program (the first in the PAT), its first H.264
//! stream (`stream_type` 0x1B) and its first ADTS AAC stream (0x0F). PES packets are reassembled
//! per PID and bounded; a lost packet (continuity counter gap) drops the PES it was part of.
//! Anything else (other streams, SCTE-35, null packets) is skipped.

use bytes::{Bytes, BytesMut};

/// Size of a transport stream packet.
pub const PACKET: usize = 188;
const SYNC: u8 = 0x47;
/// `stream_type` of H.264 video.
const H264: u8 = 0x1b;
/// `stream_type` of AAC audio in ADTS.
const ADTS_AAC: u8 = 0x0f;

/// What the demuxer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TsEvent {
    /// One H.264 access unit in Annex B, its PTS and DTS (90 kHz, 33 bits).
    Video { pts: u64, dts: u64, annexb: Bytes },
    /// One PES of ADTS AAC frames (one or more) and its PTS.
    Audio { pts: u64, adts: Bytes },
}

/// Why the stream cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    #[error("not an MPEG transport stream (no sync byte)")]
    NoSync,
    #[error("a PES packet is larger than {0} bytes")]
    PesTooLarge(usize),
}

#[derive(Debug, Default)]
struct Pes {
    buf: BytesMut,
    /// Set once a PES start has been seen and no packet was lost since.
    open: bool,
    last_cc: Option<u8>,
}

/// The demuxer of one stream.
#[derive(Debug)]
pub struct TsDemuxer {
    max_pes: usize,
    pending: BytesMut,
    pmt_pid: Option<u16>,
    video_pid: Option<u16>,
    audio_pid: Option<u16>,
    video: Pes,
    audio: Pes,
    events: Vec<TsEvent>,
    /// Consecutive bytes without a sync byte where one should be.
    lost_sync: usize,
}

impl TsDemuxer {
    /// A demuxer refusing PES packets (one video frame) larger than `max_pes` bytes.
    pub fn new(max_pes: usize) -> Self {
        Self {
            max_pes,
            pending: BytesMut::new(),
            pmt_pid: None,
            video_pid: None,
            audio_pid: None,
            video: Pes::default(),
            audio: Pes::default(),
            events: Vec::new(),
            lost_sync: 0,
        }
    }

    /// Feeds bytes (any split); found frames come out of [`TsDemuxer::poll_event`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), TsError> {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= PACKET {
            if self.pending[0] != SYNC {
                // Resynchronise on the next sync byte; a stream that never has one is not TS.
                let skip = self.pending[1..]
                    .iter()
                    .position(|&b| b == SYNC)
                    .map_or(self.pending.len(), |p| p + 1);
                self.lost_sync += skip;
                let _ = self.pending.split_to(skip);
                if self.lost_sync > 4 * PACKET {
                    return Err(TsError::NoSync);
                }
                continue;
            }
            self.lost_sync = 0;
            let packet = self.pending.split_to(PACKET).freeze();
            self.packet(&packet)?;
        }
        Ok(())
    }

    /// Whether the program has a video and an audio stream we read (known once its PMT came).
    pub fn streams(&self) -> (bool, bool) {
        (self.video_pid.is_some(), self.audio_pid.is_some())
    }

    /// The next frame found, in stream order.
    pub fn poll_event(&mut self) -> Option<TsEvent> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// Ends the stream: a PES still being received is complete now.
    pub fn finish(&mut self) {
        self.flush_video();
        self.flush_audio();
    }

    fn packet(&mut self, p: &Bytes) -> Result<(), TsError> {
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let afc = (p[3] >> 4) & 0x3;
        let cc = p[3] & 0x0f;
        let mut start = 4;
        if afc & 0x2 != 0 {
            start += 1 + usize::from(p[4]);
        }
        if afc & 0x1 == 0 || start >= PACKET {
            return Ok(());
        }
        let payload = p.slice(start..);
        if pid == 0 {
            if pusi {
                self.pat(&payload);
            }
        } else if Some(pid) == self.pmt_pid {
            if pusi {
                self.pmt(&payload);
            }
        } else if Some(pid) == self.video_pid {
            if pusi {
                self.flush_video();
            }
            Self::gather(&mut self.video, pusi, cc, &payload, self.max_pes)?;
        } else if Some(pid) == self.audio_pid {
            if pusi {
                self.flush_audio();
            }
            Self::gather(&mut self.audio, pusi, cc, &payload, self.max_pes)?;
        }
        Ok(())
    }

    fn gather(
        pes: &mut Pes,
        start: bool,
        cc: u8,
        payload: &[u8],
        max: usize,
    ) -> Result<(), TsError> {
        let continuous = pes.last_cc.is_none_or(|last| (last + 1) & 0xf == cc);
        pes.last_cc = Some(cc);
        if start {
            pes.buf.clear();
            pes.open = true;
        } else if !continuous {
            // A lost packet: this PES is broken; wait for the next start.
            pes.open = false;
            pes.buf.clear();
        }
        if !pes.open {
            return Ok(());
        }
        if pes.buf.len() + payload.len() > max {
            return Err(TsError::PesTooLarge(max));
        }
        pes.buf.extend_from_slice(payload);
        Ok(())
    }

    fn flush_video(&mut self) {
        if let Some((pts, dts, data)) = take_pes(&mut self.video) {
            self.events.push(TsEvent::Video {
                pts,
                dts,
                annexb: data,
            });
        }
    }

    fn flush_audio(&mut self) {
        if let Some((pts, _, data)) = take_pes(&mut self.audio) {
            self.events.push(TsEvent::Audio { pts, adts: data });
        }
    }

    /// The PMT PID of the first program.
    fn pat(&mut self, payload: &[u8]) {
        let Some(section) = section(payload) else {
            return;
        };
        // After the 8-byte section header: 4-byte entries, then the CRC.
        for entry in section
            .get(8..section.len().saturating_sub(4))
            .unwrap_or(&[])
            .chunks_exact(4)
        {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            if program != 0 {
                self.pmt_pid = Some((u16::from(entry[2] & 0x1f) << 8) | u16::from(entry[3]));
                return;
            }
        }
    }

    /// The first H.264 and the first ADTS AAC stream of the program.
    fn pmt(&mut self, payload: &[u8]) {
        let Some(section) = section(payload) else {
            return;
        };
        if section.len() < 12 {
            return;
        }
        let info_len = (usize::from(section[10] & 0x0f) << 8) | usize::from(section[11]);
        let end = section.len().saturating_sub(4);
        let mut i = 12 + info_len;
        let (mut video, mut audio) = (None, None);
        while i + 5 <= end {
            let kind = section[i];
            let pid = (u16::from(section[i + 1] & 0x1f) << 8) | u16::from(section[i + 2]);
            let es_len = (usize::from(section[i + 3] & 0x0f) << 8) | usize::from(section[i + 4]);
            match kind {
                H264 if video.is_none() => video = Some(pid),
                ADTS_AAC if audio.is_none() => audio = Some(pid),
                _ => {}
            }
            i += 5 + es_len;
        }
        self.video_pid = video;
        self.audio_pid = audio;
    }
}

/// The section a PSI payload starts (after its pointer field), up to its declared length.
fn section(payload: &[u8]) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let s = payload.get(1 + pointer..)?;
    if s.len() < 3 {
        return None;
    }
    let len = (usize::from(s[1] & 0x0f) << 8) | usize::from(s[2]);
    s.get(..3 + len)
}

/// A complete PES: its PTS, DTS (= PTS when absent) and payload; `None` if it is not usable.
fn take_pes(pes: &mut Pes) -> Option<(u64, u64, Bytes)> {
    if !pes.open {
        return None;
    }
    pes.open = false;
    let buf = std::mem::take(&mut pes.buf).freeze();
    if buf.len() < 9 || buf[..3] != [0, 0, 1] {
        return None;
    }
    let flags = buf[7];
    let header_len = usize::from(buf[8]);
    let body = 9 + header_len;
    if buf.len() < body {
        return None;
    }
    let pts = (flags & 0x80 != 0)
        .then(|| timestamp(&buf[9..14]))
        .flatten()?;
    let dts = if flags & 0x40 != 0 {
        timestamp(buf.get(14..19)?)?
    } else {
        pts
    };
    Some((pts, dts, buf.slice(body..)))
}

/// A 33-bit PES timestamp from its 5 bytes.
fn timestamp(b: &[u8]) -> Option<u64> {
    if b.len() < 5 {
        return None;
    }
    Some(
        (u64::from(b[0] >> 1) & 0x07) << 30
            | u64::from(b[1]) << 22
            | (u64::from(b[2]) >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4]) >> 1,
    )
}
