//! What an SDP offer can carry, decided before any WebRTC state is built: a WHIP offer must send
//! H.264 (packetization-mode 1) or Opus, a WHEP offer must receive the room's codecs. The
//! answers here become `400` (not an offer) and `406` (no usable codec) with a reason.

use rtc::sdp::{MediaDescription, SessionDescription};

/// The usable codecs of one offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OfferCodecs {
    /// A video section offers H.264 with packetization-mode 1.
    pub h264: bool,
    /// An audio section offers Opus.
    pub opus: bool,
    /// It has a video section at all.
    pub video: bool,
    /// It has an audio section at all.
    pub audio: bool,
}

/// Why an offer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("not an SDP offer: {0}")]
    Malformed(String),
    #[error("no usable codec: {0}")]
    NoCodec(String),
}

/// Largest offer accepted (browsers send 5-15 KB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// Reads the codecs of an offer; fails on text that is not an SDP session description (parsed by
/// the `rtc` crate's SDP parser, the one the session itself uses).
pub fn offer_codecs(sdp: &str) -> Result<OfferCodecs, OfferError> {
    if sdp.len() > MAX_OFFER_BYTES {
        return Err(OfferError::Malformed(format!(
            "{} bytes, over {MAX_OFFER_BYTES}",
            sdp.len()
        )));
    }
    let desc = SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp))
        .map_err(|e| OfferError::Malformed(e.to_string()))?;
    if desc.media_descriptions.is_empty() {
        return Err(OfferError::Malformed("it has no media section".into()));
    }
    let mut out = OfferCodecs::default();
    for m in &desc.media_descriptions {
        let codecs = m.codecs();
        let named = |name: &'static str| {
            codecs
                .values()
                .filter(move |c| c.name.eq_ignore_ascii_case(name))
                .map(|c| c.payload_type)
        };
        match m.media_name.media.as_str() {
            "video" => {
                out.video = true;
                let pm1 = packetization_mode_1(m);
                out.h264 |= named("H264").any(|pt| pm1.contains(&pt));
            }
            "audio" => {
                out.audio = true;
                out.opus |= named("opus").next().is_some();
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The payload types of a media section whose `a=fmtp` says `packetization-mode=1` (parameters
/// read leniently: some encoders put a space after each `;`).
fn packetization_mode_1(m: &MediaDescription) -> Vec<u8> {
    m.attributes
        .iter()
        .filter(|a| a.key == "fmtp")
        .filter_map(|a| {
            let (pt, params) = a.value.as_deref()?.split_once(' ')?;
            let mode_1 = params
                .split(';')
                .filter_map(|p| p.trim().split_once('='))
                .any(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("packetization-mode") && v.trim() == "1"
                });
            mode_1.then(|| pt.trim().parse().ok()).flatten()
        })
        .collect()
}

/// Decides a WHIP offer: at least one of H.264 (mode 1) video and Opus audio.
pub fn check_publish(c: &OfferCodecs) -> Result<(), OfferError> {
    if c.h264 || c.opus {
        return Ok(());
    }
    Err(OfferError::NoCodec(
        "a WHIP offer must send H.264 (packetization-mode=1) video or Opus audio".into(),
    ))
}

/// Decides a WHEP offer against the room: it must take the room's H.264 video if the room has
/// video; audio is sent only if it takes Opus and the room has Opus.
pub fn check_play(c: &OfferCodecs, room_h264: bool, room_opus: bool) -> Result<(), OfferError> {
    if room_h264 && !c.h264 {
        return Err(OfferError::NoCodec(
            "the room sends H.264 video; the offer has no H.264 with packetization-mode=1".into(),
        ));
    }
    if !(room_h264 || room_opus && c.opus) {
        return Err(OfferError::NoCodec(
            "nothing the room sends (H.264, Opus) is in the offer".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LIKE: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 102 103\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 H264/90000\r\na=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n";

    #[test]
    fn reads_a_browser_offer() {
        let c = offer_codecs(CHROME_LIKE).unwrap();
        assert_eq!(
            c,
            OfferCodecs {
                h264: true,
                opus: true,
                video: true,
                audio: true
            }
        );
        assert!(check_publish(&c).is_ok());
        assert!(check_play(&c, true, true).is_ok());
    }

    #[test]
    fn h264_only_in_mode_0_is_not_usable() {
        let sdp = CHROME_LIKE.replace("packetization-mode=1", "packetization-mode=0");
        let c = offer_codecs(&sdp).unwrap();
        assert!(!c.h264);
        assert!(c.opus);
        assert!(
            check_play(&c, true, true).is_err(),
            "video room needs H.264"
        );
        assert!(check_publish(&c).is_ok(), "Opus alone can be published");
    }

    #[test]
    fn vp8_and_pcmu_only_is_refused_with_a_reason() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        let c = offer_codecs(sdp).unwrap();
        let e = check_publish(&c).unwrap_err();
        assert!(matches!(e, OfferError::NoCodec(_)));
        assert!(e.to_string().contains("H.264"), "{e}");
        assert!(check_play(&c, false, true).is_err());
    }

    #[test]
    fn an_h264_payload_type_in_the_audio_section_does_not_count() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=audio 9 RTP/AVP 102\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=1\r\n";
        assert!(!offer_codecs(sdp).unwrap().h264);
    }

    #[test]
    fn fmtp_parameters_are_read_with_spaces_after_semicolons() {
        let sdp = CHROME_LIKE.replace(
            "level-asymmetry-allowed=1;packetization-mode=1",
            "level-asymmetry-allowed=1; packetization-mode=1",
        );
        assert!(offer_codecs(&sdp).unwrap().h264);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            offer_codecs("hello"),
            Err(OfferError::Malformed(_))
        ));
        assert!(matches!(
            offer_codecs("v=0\r\ns=-\r\n"),
            Err(OfferError::Malformed(_))
        ));
        let huge = format!("v=0\r\nm=video 9\r\n{}", "a=x\r\n".repeat(20_000));
        assert!(matches!(offer_codecs(&huge), Err(OfferError::Malformed(_))));
    }
}
