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

/// H.264 profiles a viewer's video is offered under, most preferred first: those the node
/// registers (`H264_PROFILES`; the fan-out path sends the room's stream under the one payload
/// type kept; `level-asymmetry-allowed` lets the browser decode any level).
pub(crate) const H264_PREFERRED: &[&str] = &["42e01f", "42001f", "4d001f", "64001f", "640c1f"];

/// Whether two `profile-level-id`s name the same profile: profile_idc and constraint flags,
/// the level aside (the decoder's business under `level-asymmetry-allowed`), as `rtc` matches
/// an offered H.264 to a registered one.
pub fn same_h264_profile(a: &str, b: &str) -> bool {
    matches!((a.get(..4), b.get(..4)), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
}

/// RTCP feedback a fan-out viewer's streams use: NACK, PLI and FIR.
const FEEDBACK_KEPT: &[&str] = &["nack", "nack pli", "ccm fir"];

/// A WHEP offer cut to what a fan-out viewer is sent, before the peer connection sees it: in a
/// video section one H.264 payload type with packetization-mode 1 (the first of a profile in
/// [`H264_PREFERRED`] offered, at any level; else the first offered), in an audio section
/// Opus; only NACK, PLI and FIR feedback, each line once; no header extensions (the fan-out
/// path writes none) and no ICE candidates (the node is ICE-lite: it answers the peer's checks
/// from wherever they come).
/// `rtc` keeps the offer it is given, as text and parsed, for the session's life: a browser's
/// offer of every codec it can receive (VP8, VP9, AV1, H.264 in six variants, each with its
/// RTX, RED, FEC, G.722, ...) was ~20 KiB of each viewer's memory, with the answer and the
/// codec lists made from it. A section keeping no codec is left as it is (the answer then
/// declines it as before); other lines are kept.
pub fn trim_play_offer(sdp: &str) -> String {
    let mut out = String::with_capacity(sdp.len());
    let mut rest = sdp;
    // The session part, up to the first media section.
    let first = find_section(rest, 0);
    out.push_str(&rest[..first]);
    rest = &rest[first..];
    while !rest.is_empty() {
        let end = find_section(rest, 1);
        trim_section(&rest[..end], &mut out);
        rest = &rest[end..];
    }
    out
}

/// The `profile-level-id` of the first H.264 payload type of an offer's video section.
pub fn h264_profile(sdp: &str) -> Option<String> {
    let desc = SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp)).ok()?;
    let m = desc
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "video")?;
    let codecs = m.codecs();
    m.media_name.formats.iter().find_map(|f| {
        let pt: u8 = f.parse().ok()?;
        let c = codecs.get(&pt)?;
        if !c.name.eq_ignore_ascii_case("H264") {
            return None;
        }
        fmtp_param(&c.fmtp, "profile-level-id").map(str::to_owned)
    })
}

/// Where the first `m=` line at or after byte `from` starts (the text's end if none).
fn find_section(sdp: &str, from: usize) -> usize {
    let mut at = 0;
    for line in sdp.split_inclusive('\n') {
        if at >= from && line.starts_with("m=") {
            return at;
        }
        at += line.len();
    }
    sdp.len()
}

/// The payload type and the rest of a line `a=<key>:<pt> <rest>`.
fn pt_attribute<'a>(line: &'a str, key: &str) -> Option<(u8, &'a str)> {
    let v = line.trim_end().strip_prefix("a=")?.strip_prefix(key)?;
    let v = v.strip_prefix(':')?;
    let (pt, rest) = v.split_once(' ').unwrap_or((v, ""));
    Some((pt.parse().ok()?, rest))
}

/// The value of `name` in `a=fmtp` parameters (read leniently, as [`packetization_mode_1`]).
fn fmtp_param<'a>(params: &'a str, name: &str) -> Option<&'a str> {
    params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The payload type a fan-out viewer's section keeps, if any. One pass over the section
/// (an offer of up to [`MAX_OFFER_BYTES`] may repeat lines: the first `rtpmap` and the first
/// `fmtp` of a payload type count), then a choice among at most 128 payload types.
fn kept_payload_type(media: &str, body: &[&str]) -> Option<u8> {
    let mut codec: [Option<&str>; 128] = [None; 128];
    let mut fmtp: [&str; 128] = [""; 128];
    let mut has_fmtp = [false; 128];
    let mut order = Vec::new();
    for line in body {
        if let Some((pt, rest)) = pt_attribute(line, "rtpmap") {
            let slot = codec.get_mut(usize::from(pt)).filter(|c| c.is_none());
            if let Some(slot) = slot {
                *slot = Some(rest.split('/').next().unwrap_or_default());
                order.push(pt);
            }
        } else if let Some((pt, rest)) = pt_attribute(line, "fmtp") {
            if let Some(seen) = has_fmtp.get_mut(usize::from(pt)).filter(|s| !**s) {
                *seen = true;
                fmtp[usize::from(pt)] = rest;
            }
        }
    }
    let named = |name: &'static str| {
        order
            .iter()
            .copied()
            .filter(move |&pt| codec[usize::from(pt)].is_some_and(|c| c.eq_ignore_ascii_case(name)))
    };
    match media {
        "video" => {
            // (payload type, profile-level-id) of the H.264 payload types in mode 1.
            let mode_1: Vec<(u8, &str)> = named("H264")
                .filter_map(|pt| {
                    let params = fmtp[usize::from(pt)];
                    (fmtp_param(params, "packetization-mode") == Some("1")).then(|| {
                        (
                            pt,
                            fmtp_param(params, "profile-level-id").unwrap_or_default(),
                        )
                    })
                })
                .collect();
            H264_PREFERRED
                .iter()
                .find_map(|want| {
                    mode_1
                        .iter()
                        .find(|(_, profile)| same_h264_profile(profile, want))
                })
                .or_else(|| mode_1.first())
                .map(|(pt, _)| *pt)
        }
        "audio" => named("opus").next(),
        _ => None,
    }
}

/// One media section (`m=` line first), trimmed into `out`.
fn trim_section(section: &str, out: &mut String) {
    let mut lines = section.split_inclusive('\n');
    let m_line = lines.next().unwrap_or_default();
    let body: Vec<&str> = lines.collect();
    let mut fields = m_line.trim_end().split(' ');
    let (Some(media), Some(port), Some(proto)) = (fields.next(), fields.next(), fields.next())
    else {
        out.push_str(section);
        return;
    };
    let media = media.strip_prefix("m=").unwrap_or(media);
    let Some(pt) =
        kept_payload_type(media, &body).filter(|pt| fields.any(|f| f.parse() == Ok(*pt)))
    else {
        out.push_str(section);
        return;
    };
    let eol = if m_line.ends_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    out.push_str(&format!("m={media} {port} {proto} {pt}{eol}"));
    // The kept payload type's lines once each (the first `rtpmap` and `fmtp`, each feedback
    // line once): a repeated line would be kept by `rtc` for the session's life.
    let (mut rtpmap, mut fmtp) = (false, false);
    let mut feedback: Vec<(bool, &str)> = Vec::new();
    for line in body {
        let dropped = if line.starts_with("a=extmap:")
            || line.starts_with("a=candidate:")
            || line.starts_with("a=end-of-candidates")
        {
            true
        } else if let Some((p, _)) = pt_attribute(line, "rtpmap") {
            p != pt || std::mem::replace(&mut rtpmap, true)
        } else if let Some((p, _)) = pt_attribute(line, "fmtp") {
            p != pt || std::mem::replace(&mut fmtp, true)
        } else if let Some(v) = line.trim_end().strip_prefix("a=rtcp-fb:") {
            let (p, fb) = v.split_once(' ').unwrap_or((v, ""));
            // At most one line per kind of feedback, for the payload type and for `*`.
            let key = (p == "*", fb.trim());
            let unused = (!key.0 && p.parse() != Ok(pt)) || !FEEDBACK_KEPT.contains(&key.1);
            let repeated = feedback.contains(&key);
            if !unused && !repeated {
                feedback.push(key);
            }
            unused || repeated
        } else {
            false
        };
        if !dropped {
            out.push_str(line);
        }
    }
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

    /// The shape of Chromium's recvonly WHEP offer (cut: fewer codecs, no candidates).
    const CHROMIUM_RECVONLY: &str = "v=0\r\no=- 4611 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 108 45 46\r\nc=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=ice-options:trickle\r\na=fingerprint:sha-256 00:11\r\na=setup:actpass\r\na=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 nack\r\n\
a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=rtcp-fb:102 nack\r\na=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n\
a=rtpmap:104 H264/90000\r\na=rtcp-fb:104 nack\r\n\
a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:105 rtx/90000\r\na=fmtp:105 apt=104\r\n\
a=rtpmap:108 H264/90000\r\na=rtcp-fb:108 goog-remb\r\na=rtcp-fb:108 transport-cc\r\n\
a=rtcp-fb:108 ccm fir\r\na=rtcp-fb:108 nack\r\na=rtcp-fb:108 nack pli\r\n\
a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=candidate:1 1 udp 2113937151 192.168.1.2 50000 typ host generation 0\r\n\
a=end-of-candidates\r\n\
a=rtpmap:45 AV1/90000\r\na=rtpmap:46 rtx/90000\r\na=fmtp:46 apt=45\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\na=mid:1\r\na=extmap:14 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=recvonly\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n";

    #[test]
    fn a_play_offer_is_cut_to_one_h264_mode_1_and_opus() {
        let trimmed = trim_play_offer(CHROMIUM_RECVONLY);
        assert_eq!(
            offer_codecs(&trimmed).unwrap(),
            offer_codecs(CHROMIUM_RECVONLY).unwrap(),
            "{trimmed}"
        );
        let lines: Vec<&str> = trimmed.lines().collect();
        // 42e01f is preferred to the 42001f offered first.
        assert!(
            lines.contains(&"m=video 9 UDP/TLS/RTP/SAVPF 108"),
            "{trimmed}"
        );
        assert!(
            lines.contains(&"m=audio 9 UDP/TLS/RTP/SAVPF 111"),
            "{trimmed}"
        );
        for gone in [
            "VP8",
            "rtx",
            "AV1",
            "apt=",
            "packetization-mode=0",
            "red/",
            "G722",
            "PCMU",
            "telephone-event",
            "extmap:",
            "goog-remb",
            "transport-cc",
            "a=rtcp-fb:102",
            "a=rtcp-fb:104",
            "profile-level-id=42001f",
            "a=candidate",
            "end-of-candidates",
        ] {
            assert!(!trimmed.contains(gone), "{gone} left in {trimmed}");
        }
        for kept in [
            "a=group:BUNDLE 0 1",
            "a=extmap-allow-mixed",
            "a=ice-ufrag:abcd",
            "a=fingerprint:sha-256 00:11",
            "a=setup:actpass",
            "a=mid:0",
            "a=mid:1",
            "a=recvonly",
            "a=rtcp-mux",
            "a=rtcp-fb:108 nack\r\n",
            "a=rtcp-fb:108 nack pli",
            "a=rtcp-fb:108 ccm fir",
            "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            "a=fmtp:111 minptime=10;useinbandfec=1",
        ] {
            assert!(trimmed.contains(kept), "{kept} lost from {trimmed}");
        }
        assert!(trimmed.ends_with("\r\n") && !trimmed.contains("\r\n\r\n"));
        assert_eq!(h264_profile(&trimmed).as_deref(), Some("42e01f"));
        assert_eq!(h264_profile(CHROMIUM_RECVONLY).as_deref(), Some("42001f"));
        assert!(trimmed.len() * 2 < CHROMIUM_RECVONLY.len());
    }

    #[test]
    fn without_a_preferred_profile_the_first_mode_1_h264_is_kept() {
        let sdp = CHROMIUM_RECVONLY
            .replace("profile-level-id=42e01f", "profile-level-id=f4001f")
            .replace("profile-level-id=42001f", "profile-level-id=58001e");
        let trimmed = trim_play_offer(&sdp);
        assert!(
            trimmed.contains("m=video 9 UDP/TLS/RTP/SAVPF 102\r\n"),
            "{trimmed}"
        );
        assert!(offer_codecs(&trimmed).unwrap().h264);
    }

    #[test]
    fn a_preferred_profile_is_matched_at_any_level() {
        // Constrained baseline with other constraint flags (not registered) offered first,
        // then constrained baseline at level 5.2: the second is ours, its level aside.
        let sdp = CHROMIUM_RECVONLY
            .replace("profile-level-id=42001f", "profile-level-id=42c01f")
            .replace("profile-level-id=42e01f", "profile-level-id=42e034");
        let trimmed = trim_play_offer(&sdp);
        assert!(
            trimmed.contains("m=video 9 UDP/TLS/RTP/SAVPF 108\r\n"),
            "{trimmed}"
        );
        let kept = h264_profile(&trimmed).unwrap();
        assert!(same_h264_profile(&kept, "42e01f"));
        assert!(!same_h264_profile("42c01f", "42e01f") && !same_h264_profile("42", "42"));
    }

    /// Every profile preferred is one the node registers, and the other way round.
    #[test]
    fn the_preferred_profiles_are_the_registered_ones() {
        let registered = super::super::H264_PROFILES;
        for want in H264_PREFERRED {
            assert!(registered.iter().any(|(_, id)| id == want), "{want}");
        }
        assert_eq!(registered.len(), H264_PREFERRED.len());
    }

    /// An offer repeating the kept payload type's lines (up to the size limit) is cut to one
    /// of each: `rtc` would keep every copy for the session's life.
    #[test]
    fn repeated_lines_of_the_kept_payload_type_are_kept_once() {
        let mut sdp = CHROME_LIKE.to_string();
        for _ in 0..500 {
            sdp.push_str("a=rtpmap:102 H264/90000\r\na=fmtp:102 packetization-mode=0\r\n");
            sdp.push_str("a=rtcp-fb:102 nack\r\na=rtcp-fb:* nack pli\r\n");
        }
        assert!(sdp.len() < MAX_OFFER_BYTES);
        let trimmed = trim_play_offer(&sdp);
        assert!(
            trimmed.contains("m=video 9 UDP/TLS/RTP/SAVPF 102\r\n"),
            "{trimmed}"
        );
        for (line, n) in [
            ("a=rtpmap:102 ", 1),
            ("a=fmtp:102 ", 1),
            ("a=rtcp-fb:102 nack\r\n", 1),
            ("a=rtcp-fb:* nack pli", 1),
            ("packetization-mode=0", 0),
        ] {
            assert_eq!(trimmed.matches(line).count(), n, "{line} in {trimmed}");
        }
        // The first fmtp counts: the later ones (mode 0) neither unseat nor join it.
        assert!(trimmed.contains("profile-level-id=42001f"));
    }

    #[test]
    fn a_section_with_nothing_usable_is_left_as_it_is() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\na=extmap:1 urn:x\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\n";
        assert_eq!(trim_play_offer(sdp), sdp);
        assert_eq!(trim_play_offer("hello"), "hello");
        assert_eq!(trim_play_offer(""), "");
    }
}
