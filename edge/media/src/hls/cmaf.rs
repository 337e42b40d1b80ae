//! CMAF (fragmented MP4) muxing: the init segment of a room's tracks and the `moof`+`mdat` of a
//! run of samples.
//!
//! Sans-IO and deterministic: no clock and no randomness go into the bytes, so every node that
//! muxes the same frames serves byte-identical files (a CDN may cache them from any edge).

use bytes::{BufMut as _, Bytes, BytesMut};
use mp4_atom::{
    esds, Atom, Audio, Avc1, Avcc, Codec, Dinf, Dops, Dref, Encode, Esds, Ftyp, Hdlr, Mdhd, Mdia,
    Mfhd, Minf, Moof, Moov, Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsd, Tfdt, Tfhd, Tkhd, Traf,
    Trak, Trex, Trun, TrunEntry, Url, Visual, Vmhd,
};
use streamhub_shared::media::{CodecConfig, TrackId, TrackInfo};

/// `sample_depends_on = 2` (does not depend on others): a sync sample.
const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
/// `sample_depends_on = 1`, `sample_is_non_sync_sample = 1`.
const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;
/// Size of an `mdat` box header with a 32-bit size.
const MDAT_HEADER_LEN: usize = 8;

/// Why an init or media segment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CmafError {
    #[error("an init segment needs at least one track")]
    NoTracks,
    #[error("track {track}: invalid AVCDecoderConfigurationRecord: {source}")]
    Avcc {
        track: TrackId,
        #[source]
        source: mp4_atom::Error,
    },
    #[error("track {track}: id does not fit an MP4 track id")]
    TrackId { track: TrackId },
    #[error("track {track}: sample of {size} bytes does not fit a trun entry")]
    SampleTooLarge { track: TrackId, size: usize },
    #[error("track {track}: {codec} is not carried in CMAF")]
    Unsupported { track: TrackId, codec: &'static str },
    #[error("media segment of {size} bytes does not fit a 32-bit mdat")]
    SegmentTooLarge { size: usize },
    #[error("encoding the {kind} box failed: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: mp4_atom::Error,
    },
}

/// One sample (access unit) ready to be muxed, timed in its track's timescale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Decode time; the first sample's becomes the fragment's `tfdt`.
    pub dts: u64,
    /// Ticks until the next sample's decode time.
    pub duration: u32,
    /// `pts - dts` (signed: written in a version 1 `trun`).
    pub composition_offset: i32,
    /// A sync sample (IDR for video; every AAC frame).
    pub keyframe: bool,
    /// The payload, exactly as it goes into `mdat` (AVCC NALUs or a raw AAC AU).
    pub data: Bytes,
}

/// The MP4 track id of a room track (MP4 ids start at 1; ours start at 0).
pub fn mp4_track_id(track: TrackId) -> Result<u32, CmafError> {
    track.checked_add(1).ok_or(CmafError::TrackId { track })
}

/// Builds the init segment (`ftyp` + `moov`) describing `tracks`.
pub fn init_segment(tracks: &[TrackInfo]) -> Result<Bytes, CmafError> {
    if tracks.is_empty() {
        return Err(CmafError::NoTracks);
    }
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
    };
    let mut trak = Vec::with_capacity(tracks.len());
    let mut trex = Vec::with_capacity(tracks.len());
    let mut next_track_id = 1;
    for info in tracks {
        let track_id = mp4_track_id(info.id)?;
        next_track_id = next_track_id.max(track_id.saturating_add(1));
        trak.push(build_trak(info, track_id)?);
        trex.push(Trex {
            track_id,
            default_sample_description_index: 1,
            ..Default::default()
        });
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id,
            ..Default::default()
        },
        mvex: Some(Mvex { mehd: None, trex }),
        trak,
        ..Default::default()
    };
    let mut out = Vec::new();
    encode(&ftyp, "ftyp", &mut out)?;
    encode(&moov, "moov", &mut out)?;
    Ok(Bytes::from(out))
}

fn build_trak(info: &TrackInfo, track_id: u32) -> Result<Trak, CmafError> {
    let video = info.codec.is_video();
    let mut tkhd = Tkhd {
        track_id,
        enabled: true,
        in_movie: true,
        ..Default::default()
    };
    let mut minf = Minf {
        dinf: Dinf {
            dref: Dref {
                entries: vec![Url {
                    location: String::new(),
                }
                .into()],
            },
        },
        stbl: Stbl {
            stsd: Stsd {
                codecs: vec![sample_entry(info, track_id)?],
            },
            stco: Some(Stco::default()),
            ..Default::default()
        },
        ..Default::default()
    };
    if let CodecConfig::H264 { width, height, .. } = info.codec {
        tkhd.width = width.into();
        tkhd.height = height.into();
        minf.vmhd = Some(Vmhd::default());
    } else {
        tkhd.volume = 1.into();
        tkhd.alternate_group = 1;
        minf.smhd = Some(Smhd::default());
    }
    let (handler, name) = match video {
        true => (b"vide", "VideoHandler"),
        false => (b"soun", "SoundHandler"),
    };
    Ok(Trak {
        tkhd,
        mdia: Mdia {
            mdhd: Mdhd {
                timescale: info.timescale,
                language: "und".into(),
                ..Default::default()
            },
            hdlr: Hdlr {
                handler: handler.into(),
                name: name.into(),
            },
            minf,
        },
        ..Default::default()
    })
}

fn sample_entry(info: &TrackInfo, track_id: u32) -> Result<Codec, CmafError> {
    match &info.codec {
        CodecConfig::H264 {
            avcc,
            width,
            height,
        } => {
            let avcc = Avcc::decode_body(&mut avcc.as_ref()).map_err(|source| CmafError::Avcc {
                track: info.id,
                source,
            })?;
            Ok(Avc1 {
                visual: Visual {
                    data_reference_index: 1,
                    width: *width,
                    height: *height,
                    ..Default::default()
                },
                avcc,
                btrt: None,
                colr: None,
                pasp: None,
                taic: None,
                fiel: None,
                spatial: None,
            }
            .into())
        }
        CodecConfig::Aac {
            asc,
            sample_rate,
            channels,
        } => Ok(Mp4a {
            audio: Audio {
                data_reference_index: 1,
                channel_count: u16::from(*channels),
                sample_size: 16,
                // 16.16 fixed point: rates above 65535 Hz cannot be written; 0 means "see esds".
                sample_rate: u16::try_from(*sample_rate).unwrap_or(0).into(),
            },
            esds: aac_esds(asc, track_id),
            btrt: None,
            taic: None,
        }
        .into()),
        // Opus in ISO BMFF (the Opus-in-MP4 encapsulation): an `Opus` sample entry with `dOps`.
        // WebRTC Opus packets come with no encoder delay to trim: pre-skip 0.
        CodecConfig::Opus { channels } => Ok(Opus {
            audio: Audio {
                data_reference_index: 1,
                channel_count: u16::from(*channels),
                sample_size: 16,
                sample_rate: 48_000u16.into(),
            },
            dops: Dops {
                output_channel_count: *channels,
                pre_skip: 0,
                input_sample_rate: 48_000,
                output_gain: 0,
                channel_mapping: None,
            },
            btrt: None,
        }
        .into()),
        CodecConfig::Jpeg { .. } => Err(CmafError::Unsupported {
            track: info.id,
            codec: info.codec.name(),
        }),
    }
}

fn aac_esds(asc: &Bytes, track_id: u32) -> Esds {
    let profile = asc.first().map_or(0, |b| b >> 3);
    let freq_index = match (asc.first(), asc.get(1)) {
        (Some(a), Some(b)) => ((a & 0x07) << 1) | (b >> 7),
        _ => 0,
    };
    let chan_conf = asc.get(1).map_or(0, |b| (b >> 3) & 0x0f);
    Esds {
        es_desc: esds::EsDescriptor {
            // The ES id is a u16; the track id of a room never comes near that.
            es_id: u16::try_from(track_id).unwrap_or(0),
            dec_config: esds::DecoderConfig {
                object_type_indication: 0x40, // MPEG-4 Audio
                stream_type: 0x05,            // AudioStream
                dec_specific: Some(esds::DecoderSpecific {
                    profile,
                    freq_index,
                    chan_conf,
                    raw: asc.to_vec(),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

/// Builds one CMAF fragment (`moof` + one `mdat`) holding `per_track` samples, in that order.
///
/// `seq` goes into `mfhd`; tracks without samples are left out. `tfhd` uses
/// default-base-is-moof and each `trun` carries its offset into the `mdat`.
pub fn media_segment(seq: u32, per_track: &[(TrackInfo, Vec<Sample>)]) -> Result<Bytes, CmafError> {
    let tracks: Vec<&(TrackInfo, Vec<Sample>)> =
        per_track.iter().filter(|(_, s)| !s.is_empty()).collect();
    let mut trafs = Vec::with_capacity(tracks.len());
    let mut payload = 0usize;
    for (info, samples) in &tracks {
        trafs.push(build_traf(info, samples)?);
        payload += samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mut moof = Moof {
        mfhd: Mfhd {
            sequence_number: seq,
        },
        traf: trafs,
    };
    // The trun offsets depend on the moof size, which does not depend on their values.
    let moof_len = encoded_len(&moof)?;
    let mut offset = moof_len + MDAT_HEADER_LEN;
    for (traf, (_, samples)) in moof.traf.iter_mut().zip(&tracks) {
        let data_offset =
            i32::try_from(offset).map_err(|_| CmafError::SegmentTooLarge { size: offset })?;
        if let Some(trun) = traf.trun.first_mut() {
            trun.data_offset = Some(data_offset);
        }
        offset += samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    let mdat_len = MDAT_HEADER_LEN + payload;
    let mdat_size =
        u32::try_from(mdat_len).map_err(|_| CmafError::SegmentTooLarge { size: mdat_len })?;
    let mut out = Vec::with_capacity(moof_len + mdat_len);
    encode(&moof, "moof", &mut out)?;
    let mut out = BytesMut::from(&out[..]);
    out.put_u32(mdat_size);
    out.put_slice(b"mdat");
    for (_, samples) in &tracks {
        for sample in samples {
            out.put_slice(&sample.data);
        }
    }
    Ok(out.freeze())
}

fn build_traf(info: &TrackInfo, samples: &[Sample]) -> Result<Traf, CmafError> {
    let entries = samples
        .iter()
        .map(|s| {
            let size = u32::try_from(s.data.len()).map_err(|_| CmafError::SampleTooLarge {
                track: info.id,
                size: s.data.len(),
            })?;
            Ok(TrunEntry {
                duration: Some(s.duration),
                size: Some(size),
                flags: Some(match s.keyframe {
                    true => SYNC_SAMPLE_FLAGS,
                    false => NON_SYNC_SAMPLE_FLAGS,
                }),
                cts: Some(i64::from(s.composition_offset)),
            })
        })
        .collect::<Result<Vec<_>, CmafError>>()?;
    Ok(Traf {
        tfhd: Tfhd {
            track_id: mp4_track_id(info.id)?,
            default_base_is_moof: true,
            ..Default::default()
        },
        tfdt: Some(Tfdt {
            base_media_decode_time: samples.first().map_or(0, |s| s.dts),
        }),
        trun: vec![Trun {
            data_offset: Some(0),
            samples: entries.into(),
        }],
        ..Default::default()
    })
}

fn encoded_len(moof: &Moof) -> Result<usize, CmafError> {
    let mut probe = Vec::new();
    encode(moof, "moof", &mut probe)?;
    Ok(probe.len())
}

fn encode<T: Encode>(atom: &T, kind: &'static str, out: &mut Vec<u8>) -> Result<(), CmafError> {
    atom.encode(out)
        .map_err(|source| CmafError::Encode { kind, source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mp4_atom::{Decode, Mdat, TrunSamples};

    /// A Baseline-profile AVCDecoderConfigurationRecord (one SPS, one PPS).
    pub(crate) const AVCC: &[u8] = &[
        0x01, 0x42, 0xc0, 0x0d, 0xff, 0xe1, 0x00, 0x0f, 0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41,
        0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x01, 0x00, 0x04, 0x68, 0xcb, 0x83, 0xcb,
    ];

    pub(crate) fn video() -> TrackInfo {
        TrackInfo {
            id: 0,
            timescale: 90_000,
            codec: CodecConfig::H264 {
                avcc: Bytes::from_static(AVCC),
                width: 320,
                height: 240,
            },
        }
    }

    pub(crate) fn audio() -> TrackInfo {
        TrackInfo {
            id: 1,
            timescale: 44_100,
            codec: CodecConfig::Aac {
                asc: Bytes::from_static(&[0x12, 0x10]),
                sample_rate: 44_100,
                channels: 2,
            },
        }
    }

    fn sample(dts: u64, duration: u32, cto: i32, key: bool, data: &'static [u8]) -> Sample {
        Sample {
            dts,
            duration,
            composition_offset: cto,
            keyframe: key,
            data: Bytes::from_static(data),
        }
    }

    #[test]
    fn init_segment_round_trips() {
        let init = init_segment(&[video(), audio()]).unwrap();
        let mut buf = init.as_ref();
        let ftyp = Ftyp::decode(&mut buf).unwrap();
        assert_eq!(ftyp.major_brand, b"iso6".into());
        assert!(ftyp.compatible_brands.contains(&b"cmfc".into()));
        let moov = Moov::decode(&mut buf).unwrap();
        assert!(buf.is_empty(), "nothing after moov");
        assert_eq!(moov.trak.len(), 2);
        assert_eq!(moov.mvhd.next_track_id, 3);
        let trex: Vec<u32> = moov.mvex.unwrap().trex.iter().map(|t| t.track_id).collect();
        assert_eq!(trex, vec![1, 2]);

        let v = &moov.trak[0];
        assert_eq!(v.tkhd.track_id, 1);
        assert_eq!(v.mdia.hdlr.handler, b"vide".into());
        assert_eq!(v.mdia.mdhd.timescale, 90_000);
        assert!(v.mdia.minf.vmhd.is_some());
        let Codec::Avc1(avc1) = &v.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("expected avc1");
        };
        assert_eq!((avc1.visual.width, avc1.visual.height), (320, 240));
        let mut avcc = Vec::new();
        avc1.avcc.encode_body(&mut avcc).unwrap();
        assert_eq!(avcc, AVCC, "avcC body is the record we were given");

        let a = &moov.trak[1];
        assert_eq!(a.mdia.hdlr.handler, b"soun".into());
        assert_eq!(a.mdia.mdhd.timescale, 44_100);
        let Codec::Mp4a(mp4a) = &a.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("expected mp4a");
        };
        assert_eq!(mp4a.audio.channel_count, 2);
        let dec = mp4a.esds.es_desc.dec_config.dec_specific.as_ref().unwrap();
        assert_eq!(dec.raw, vec![0x12, 0x10]);
        assert_eq!(mp4a.esds.es_desc.dec_config.object_type_indication, 0x40);
    }

    #[test]
    fn opus_gets_an_opus_sample_entry_with_dops() {
        let opus = TrackInfo {
            id: 1,
            timescale: 48_000,
            codec: CodecConfig::Opus { channels: 2 },
        };
        let init = init_segment(&[video(), opus]).unwrap();
        let mut buf = init.as_ref();
        Ftyp::decode(&mut buf).unwrap();
        let moov = Moov::decode(&mut buf).unwrap();
        let a = &moov.trak[1];
        assert_eq!(a.mdia.hdlr.handler, b"soun".into());
        assert_eq!(a.mdia.mdhd.timescale, 48_000);
        let Codec::Opus(opus) = &a.mdia.minf.stbl.stsd.codecs[0] else {
            panic!("expected Opus");
        };
        assert_eq!(opus.audio.channel_count, 2);
        assert_eq!(opus.dops.output_channel_count, 2);
        assert_eq!(opus.dops.input_sample_rate, 48_000);
        assert!(opus.dops.channel_mapping.is_none());
    }

    #[test]
    fn init_segment_refuses_bad_input() {
        assert!(matches!(init_segment(&[]), Err(CmafError::NoTracks)));
        let mut bad = video();
        bad.codec = CodecConfig::H264 {
            avcc: Bytes::from_static(&[1, 2]),
            width: 1,
            height: 1,
        };
        assert!(matches!(
            init_segment(&[bad]),
            Err(CmafError::Avcc { track: 0, .. })
        ));
    }

    #[test]
    fn media_segment_round_trips() {
        let v = vec![
            sample(180_000, 3600, 7200, true, b"key-frame"),
            sample(183_600, 3600, -3600, false, b"p1"),
        ];
        let a = vec![
            sample(88_200, 1024, 0, true, b"aac0"),
            sample(89_224, 1024, 0, true, b"aac1"),
        ];
        let seg = media_segment(42, &[(video(), v.clone()), (audio(), a.clone())]).unwrap();

        let mut buf = seg.as_ref();
        let moof = Moof::decode(&mut buf).unwrap();
        let moof_len = seg.len() - buf.len();
        let mdat = Mdat::decode(&mut buf).unwrap();
        assert!(buf.is_empty());
        assert_eq!(moof.mfhd.sequence_number, 42);
        assert_eq!(moof.traf.len(), 2);

        let mut expected_offset = moof_len + MDAT_HEADER_LEN;
        for (traf, (track, samples)) in moof.traf.iter().zip([(1, &v), (2, &a)]) {
            assert_eq!(traf.tfhd.track_id, track);
            assert!(traf.tfhd.default_base_is_moof);
            assert_eq!(
                traf.tfdt.as_ref().unwrap().base_media_decode_time,
                samples[0].dts
            );
            let trun = &traf.trun[0];
            assert_eq!(trun.data_offset, Some(expected_offset as i32));
            let TrunSamples::Explicit(entries) = &trun.samples else {
                panic!("per-sample entries expected");
            };
            assert_eq!(entries.len(), samples.len());
            for (e, s) in entries.iter().zip(samples.iter()) {
                assert_eq!(e.size, Some(s.data.len() as u32));
                assert_eq!(e.duration, Some(s.duration));
                assert_eq!(e.cts, Some(i64::from(s.composition_offset)));
            }
            expected_offset += samples.iter().map(|s| s.data.len()).sum::<usize>();
        }
        let flags: Vec<_> = match &moof.traf[0].trun[0].samples {
            TrunSamples::Explicit(e) => e.iter().map(|e| e.flags).collect(),
            TrunSamples::Inherited { .. } => unreachable!(),
        };
        assert_eq!(
            flags,
            vec![Some(SYNC_SAMPLE_FLAGS), Some(NON_SYNC_SAMPLE_FLAGS)]
        );
        assert_eq!(mdat.data, b"key-framep1aac0aac1");
    }

    #[test]
    fn media_segment_is_deterministic_and_skips_empty_tracks() {
        let v = vec![sample(0, 3000, 0, true, b"k")];
        let one = media_segment(1, &[(video(), v.clone()), (audio(), Vec::new())]).unwrap();
        let two = media_segment(1, &[(video(), v), (audio(), Vec::new())]).unwrap();
        assert_eq!(one, two);
        let moof = Moof::decode(&mut one.as_ref()).unwrap();
        assert_eq!(moof.traf.len(), 1, "no traf for a track without samples");
    }
}
