//! A recording as an HLS VOD: one playlist over the uploaded MP4 objects, each fragment a byte
//! range of its object (`#EXT-X-BYTERANGE`), each object's init segment its first bytes
//! (`#EXT-X-MAP` with a byte range). Nothing is copied or re-packaged: the playlist points into
//! the same objects that play as progressive MP4.
//!
//! The playlist is served by the origins (the URIs in it are presigned S3 URLs, so a private
//! bucket plays), at a URL signed with a key derived from the cluster key that expires with
//! the presigned URLs inside ([`sign`], [`verify`]).

use std::fmt::Write as _;

use streamhub_cluster::state::RecordingPart;

/// The playlist of `parts` (those with an object: complete or partial), with each part's
/// object at the URL given beside it.
pub fn playlist(parts: &[(&RecordingPart, String)]) -> String {
    let fragments = || {
        parts
            .iter()
            .flat_map(|(p, _)| p.uploaded.iter().flat_map(|u| &u.fragments))
    };
    let target = fragments()
        .map(|f| f[0].div_ceil(1000))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut out = String::new();
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-INDEPENDENT-SEGMENTS\n"
    );
    for (n, (part, url)) in parts.iter().enumerate() {
        if n > 0 {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(
            out,
            "#EXT-X-MAP:URI=\"{url}\",BYTERANGE=\"{}@0\"",
            part.init_size
        );
        let mut offset = u64::from(part.init_size);
        let mut uploaded: Vec<_> = part.uploaded.iter().collect();
        uploaded.sort_by_key(|u| u.number);
        for u in uploaded {
            for f in &u.fragments {
                let _ = write!(
                    out,
                    "#EXTINF:{:.3},\n#EXT-X-BYTERANGE:{}@{offset}\n{url}\n",
                    f64::from(f[0]) / 1000.0,
                    f[1]
                );
                offset += u64::from(f[1]);
            }
        }
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

/// The signature of a playlist URL of recording `id` of `app` valid until `exp` (Unix
/// seconds).
pub fn sign(key: &[u8; 32], app: &str, id: &str, exp: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&key, format!("vod\0{app}\0{id}\0{exp}").as_bytes()).as_ref())
}

/// Checks a playlist URL's signature and expiry at `now` (Unix seconds).
pub fn verify(key: &[u8; 32], app: &str, id: &str, exp: u64, sig: &str, now: u64) -> bool {
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    exp >= now
        && ring::hmac::verify(&key, format!("vod\0{app}\0{id}\0{exp}").as_bytes(), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamhub_cluster::state::{PartState, Uploaded};

    #[test]
    fn fragments_are_byte_ranges_after_the_init() {
        let part = RecordingPart {
            index: 0,
            node: "o1".into(),
            key: "k".into(),
            upload_id: None,
            state: PartState::Complete,
            init_size: 700,
            tracks: vec![],
            started_at_ms: 0,
            continues: None,
            uploaded: vec![
                Uploaded {
                    number: 2,
                    etag: "b".into(),
                    bytes: 50,
                    fragments: vec![[1500, 50]],
                },
                Uploaded {
                    number: 1,
                    etag: "a".into(),
                    bytes: 900,
                    fragments: vec![[2000, 100], [2000, 100]],
                },
            ],
        };
        let text = playlist(&[(&part, "https://s3/k?sig".into())]);
        assert!(text.contains("#EXT-X-MAP:URI=\"https://s3/k?sig\",BYTERANGE=\"700@0\""));
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"));
        let ranges: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("#EXT-X-BYTERANGE:"))
            .collect();
        assert_eq!(ranges, ["100@700", "100@800", "50@900"]);
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn signed_urls_expire_and_bind_app_and_id() {
        let key = [7u8; 32];
        let sig = sign(&key, "a", "rec_1", 100);
        assert!(verify(&key, "a", "rec_1", 100, &sig, 99));
        assert!(!verify(&key, "a", "rec_1", 100, &sig, 101));
        assert!(!verify(&key, "a", "rec_2", 100, &sig, 99));
        assert!(!verify(&key, "b", "rec_1", 100, &sig, 99));
        assert!(!verify(&[8u8; 32], "a", "rec_1", 100, &sig, 99));
        assert!(!verify(&key, "a", "rec_1", 100, "zz", 99));
    }
}
