//! SRTP and SRTCP protection (RFC 3711, RFC 7714) in the caller's buffer, for the two profiles
//! browsers offer: `AES_CM_128_HMAC_SHA1_80` and `AEAD_AES_128_GCM`.
//!
//! Built for fan-out: the keys are expanded once per session (AES round keys, the keyed HMAC
//! state, the GCM key), and protecting a packet touches no allocator: the packet is encrypted
//! where it lies and its tag written after it. The same code unprotects (a load client checks
//! what a node sent). The master keys come from the DTLS-SRTP exporter (RFC 5764); the key
//! derivation rate is 0, as WebRTC uses it.
//!
//! Indices: an RTP packet's index is `ROC << 16 | sequence number` (48 bits); the caller keeps
//! its streams' indices (a sender knows them: it numbers its packets). The SRTCP index is kept
//! here, one per sending session.

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use hmac::{Hmac, Mac};
use ring::aead;
use sha1::Sha1;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// AES-CTR from an expanded key (no key schedule per packet) and a counter block.
fn ctr_at(cipher: &aes::Aes128, iv: [u8; 16]) -> Aes128Ctr {
    Aes128Ctr::from_core(ctr::CtrCore::inner_iv_init(cipher.clone(), &iv.into()))
}

/// A protection profile this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// AES-128 in counter mode, HMAC-SHA1 tags of 80 bits (RFC 3711).
    AesCm128HmacSha1_80,
    /// AES-128-GCM, 16-byte tags (RFC 7714).
    AeadAes128Gcm,
}

impl Profile {
    /// Master key length.
    pub const fn key_len(self) -> usize {
        16
    }

    /// Master salt length.
    pub const fn salt_len(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 => 14,
            Self::AeadAes128Gcm => 12,
        }
    }

    /// Bytes an RTP packet grows by when protected.
    pub const fn rtp_overhead(self) -> usize {
        match self {
            Self::AesCm128HmacSha1_80 => 10,
            Self::AeadAes128Gcm => 16,
        }
    }

    /// Bytes an RTCP packet grows by when protected (tag and SRTCP index).
    pub const fn rtcp_overhead(self) -> usize {
        self.rtp_overhead() + 4
    }
}

/// The most any profile adds to a packet.
pub const MAX_OVERHEAD: usize = 20;

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("wrong master key or salt length")]
    KeyLength,
    #[error("packet too short or malformed")]
    Malformed,
    #[error("no room after the packet for its tag")]
    NoRoom,
    #[error("authentication failed")]
    Auth,
}

/// Session keys of one direction (RTP or RTCP). Inline (one per session and direction): a box
/// would add a pointer chase to every packet for ~800 bytes per session.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Keys {
    Cm {
        cipher: aes::Aes128,
        salt: [u8; 14],
        mac: Hmac<Sha1>,
    },
    Gcm {
        key: std::sync::Arc<aead::LessSafeKey>,
        salt: [u8; 12],
    },
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cm { .. } => "Keys::Cm(..)",
            Self::Gcm { .. } => "Keys::Gcm(..)",
        })
    }
}

const LABEL_RTP_ENCRYPTION: u8 = 0;
const LABEL_RTP_AUTH: u8 = 1;
const LABEL_RTP_SALT: u8 = 2;
const LABEL_RTCP_ENCRYPTION: u8 = 3;
const LABEL_RTCP_AUTH: u8 = 4;
const LABEL_RTCP_SALT: u8 = 5;

/// The AES-CM key derivation function (RFC 3711 4.3.3, key derivation rate 0): the keystream of
/// AES-128 under the master key from the block `salt XOR label << 48`.
fn derive(master: &aes::Aes128, salt: &[u8], label: u8, out: &mut [u8]) {
    let mut x = [0u8; 16];
    x[..salt.len()].copy_from_slice(salt);
    x[7] ^= label;
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = x;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        let mut b = aes::Block::from(block);
        master.encrypt_block(&mut b);
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

impl Keys {
    fn new(profile: Profile, key: &[u8], salt: &[u8], rtcp: bool) -> Result<Self, Error> {
        if key.len() != profile.key_len() || salt.len() != profile.salt_len() {
            return Err(Error::KeyLength);
        }
        let master = aes::Aes128::new_from_slice(key).map_err(|_| Error::KeyLength)?;
        let (enc, auth, slt) = if rtcp {
            (LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT)
        } else {
            (LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT)
        };
        let mut session_key = [0u8; 16];
        derive(&master, salt, enc, &mut session_key);
        Ok(match profile {
            Profile::AesCm128HmacSha1_80 => {
                let mut auth_key = [0u8; 20];
                derive(&master, salt, auth, &mut auth_key);
                let mut session_salt = [0u8; 14];
                derive(&master, salt, slt, &mut session_salt);
                Keys::Cm {
                    cipher: aes::Aes128::new(&session_key.into()),
                    salt: session_salt,
                    mac: <Hmac<Sha1> as Mac>::new_from_slice(&auth_key)
                        .map_err(|_| Error::KeyLength)?,
                }
            }
            Profile::AeadAes128Gcm => {
                let mut session_salt = [0u8; 12];
                derive(&master, salt, slt, &mut session_salt);
                let key = aead::UnboundKey::new(&aead::AES_128_GCM, &session_key)
                    .map_err(|_| Error::KeyLength)?;
                Keys::Gcm {
                    key: std::sync::Arc::new(aead::LessSafeKey::new(key)),
                    salt: session_salt,
                }
            }
        })
    }

    /// AES-CM counter block: `salt << 16 XOR ssrc << 64 XOR index << 16`.
    fn cm_iv(salt: &[u8; 14], ssrc: [u8; 4], index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(salt);
        for i in 0..4 {
            iv[4 + i] ^= ssrc[i];
        }
        let idx = index.to_be_bytes();
        for i in 0..6 {
            iv[8 + i] ^= idx[2 + i];
        }
        iv
    }
}

/// Length of an RTP packet's header (fixed part, CSRCs and extension).
pub fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= packet.len()).then_some(len)
}

/// One session's SRTP/SRTCP protection in one direction (what one side sends).
#[derive(Debug, Clone)]
pub struct Srtp {
    profile: Profile,
    rtp: Keys,
    rtcp: Keys,
    /// The next SRTCP index (31 bits).
    srtcp_index: u32,
}

impl Srtp {
    /// Keys for one direction from its master key and salt.
    pub fn new(profile: Profile, master_key: &[u8], master_salt: &[u8]) -> Result<Self, Error> {
        Ok(Self {
            profile,
            rtp: Keys::new(profile, master_key, master_salt, false)?,
            rtcp: Keys::new(profile, master_key, master_salt, true)?,
            srtcp_index: 0,
        })
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Protects the RTP packet `buf[..len]` (header of `header_len` bytes, then payload) whose
    /// index is `index` (`ROC << 16 | seq`): encrypts its payload in place and writes the tag
    /// after it. `buf` must have [`Profile::rtp_overhead`] bytes after `len`. Returns the
    /// protected length.
    pub fn protect_rtp(
        &self,
        buf: &mut [u8],
        header_len: usize,
        len: usize,
        index: u64,
    ) -> Result<usize, Error> {
        let tag_len = self.profile.rtp_overhead();
        if header_len < 12 || header_len > len {
            return Err(Error::Malformed);
        }
        if buf.len() < len + tag_len {
            return Err(Error::NoRoom);
        }
        let ssrc = [buf[8], buf[9], buf[10], buf[11]];
        let roc = ((index >> 16) as u32).to_be_bytes();
        match &self.rtp {
            Keys::Cm { cipher, salt, mac } => {
                let iv = Keys::cm_iv(salt, ssrc, index);
                let mut c = ctr_at(cipher, iv);
                c.apply_keystream(&mut buf[header_len..len]);
                let mut m = mac.clone();
                m.update(&buf[..len]);
                m.update(&roc);
                let tag = m.finalize().into_bytes();
                buf[len..len + tag_len].copy_from_slice(&tag[..tag_len]);
            }
            Keys::Gcm { key, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, index);
                let (head, rest) = buf.split_at_mut(header_len);
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce,
                        aead::Aad::from(&head[..]),
                        &mut rest[..len - header_len],
                    )
                    .map_err(|_| Error::Malformed)?;
                buf[len..len + tag_len].copy_from_slice(tag.as_ref());
            }
        }
        Ok(len + tag_len)
    }

    /// Unprotects the SRTP packet `buf[..len]` of index `index` in place: checks its tag and
    /// decrypts its payload. Returns the header length and the plain packet's length.
    pub fn unprotect_rtp(
        &self,
        buf: &mut [u8],
        len: usize,
        index: u64,
    ) -> Result<(usize, usize), Error> {
        let tag_len = self.profile.rtp_overhead();
        let packet = buf.get(..len).ok_or(Error::Malformed)?;
        let header_len = rtp_header_len(packet).ok_or(Error::Malformed)?;
        if len < header_len + tag_len {
            return Err(Error::Malformed);
        }
        let ssrc = [buf[8], buf[9], buf[10], buf[11]];
        let plain = len - tag_len;
        match &self.rtp {
            Keys::Cm { cipher, salt, mac } => {
                let mut m = mac.clone();
                m.update(&buf[..plain]);
                m.update(&((index >> 16) as u32).to_be_bytes());
                m.verify_truncated_left(&buf[plain..len])
                    .map_err(|_| Error::Auth)?;
                let iv = Keys::cm_iv(salt, ssrc, index);
                let mut c = ctr_at(cipher, iv);
                c.apply_keystream(&mut buf[header_len..plain]);
            }
            Keys::Gcm { key, salt } => {
                let nonce = gcm_rtp_nonce(salt, ssrc, index);
                let (head, rest) = buf.split_at_mut(header_len);
                key.open_in_place(
                    nonce,
                    aead::Aad::from(&head[..]),
                    &mut rest[..len - header_len],
                )
                .map_err(|_| Error::Auth)?;
            }
        }
        Ok((header_len, plain))
    }

    /// Protects the RTCP packet (compound or not) `buf[..len]`: encrypts all but its first 8
    /// bytes, appends the tag and the SRTCP index. `buf` must have
    /// [`Profile::rtcp_overhead`] bytes after `len`. Returns the protected length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let overhead = self.profile.rtcp_overhead();
        if len < 8 {
            return Err(Error::Malformed);
        }
        if buf.len() < len + overhead {
            return Err(Error::NoRoom);
        }
        let index = self.srtcp_index;
        self.srtcp_index = (index + 1) & 0x7fff_ffff;
        let ssrc = [buf[4], buf[5], buf[6], buf[7]];
        let e_index = (0x8000_0000 | index).to_be_bytes();
        match &self.rtcp {
            Keys::Cm { cipher, salt, mac } => {
                let iv = Keys::cm_iv(salt, ssrc, u64::from(index));
                let mut c = ctr_at(cipher, iv);
                c.apply_keystream(&mut buf[8..len]);
                buf[len..len + 4].copy_from_slice(&e_index);
                let mut m = mac.clone();
                m.update(&buf[..len + 4]);
                let tag = m.finalize().into_bytes();
                buf[len + 4..len + 14].copy_from_slice(&tag[..10]);
            }
            Keys::Gcm { key, salt } => {
                let nonce = gcm_rtcp_nonce(salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&e_index);
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(aad), &mut buf[8..len])
                    .map_err(|_| Error::Malformed)?;
                buf[len..len + 16].copy_from_slice(tag.as_ref());
                buf[len + 16..len + 20].copy_from_slice(&e_index);
            }
        }
        Ok(len + overhead)
    }
}

fn gcm_rtp_nonce(salt: &[u8; 12], ssrc: [u8; 4], index: u64) -> aead::Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc);
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    aead::Nonce::assume_unique_for_key(iv)
}

fn gcm_rtcp_nonce(salt: &[u8; 12], ssrc: [u8; 4], index: u32) -> aead::Nonce {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc);
    iv[8..12].copy_from_slice(&index.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(salt) {
        *b ^= s;
    }
    aead::Nonce::assume_unique_for_key(iv)
}

/// A receiver's estimate of a stream's rollover counter (RFC 3711 3.3.1): the index of a
/// sequence number given the highest index seen.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexEstimate {
    highest: Option<u64>,
}

impl IndexEstimate {
    /// The likely index of `seq`.
    pub fn guess(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            return u64::from(seq);
        };
        let roc = h >> 16;
        let hs = h as u16;
        let seq64 = u64::from(seq);
        if hs < 0x8000 {
            if seq > hs && seq - hs > 0x8000 && roc > 0 {
                ((roc - 1) << 16) | seq64
            } else {
                (roc << 16) | seq64
            }
        } else if hs - 0x8000 > seq {
            ((roc + 1) << 16) | seq64
        } else {
            (roc << 16) | seq64
        }
    }

    /// Records an authenticated packet's index.
    pub fn seen(&mut self, index: u64) {
        if self.highest.is_none_or(|h| index > h) {
            self.highest = Some(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3711 B.3: key derivation test vectors.
    #[test]
    fn derives_the_rfc_3711_session_keys() {
        let key = hex::decode("E1F97A0D3E018BE0D64FA32C06DE4139").unwrap();
        let salt = hex::decode("0EC675AD498AFEEBB6960B3AABE6").unwrap();
        let master = aes::Aes128::new_from_slice(&key).unwrap();
        let mut enc = [0u8; 16];
        derive(&master, &salt, 0, &mut enc);
        assert_eq!(hex::encode_upper(enc), "C61E7A93744F39EE10734AFE3FF7A087");
        let mut s = [0u8; 14];
        derive(&master, &salt, 2, &mut s);
        assert_eq!(hex::encode_upper(s), "30CBBC08863D8C85D49DB34A9AE1");
        let mut auth = [0u8; 94];
        derive(&master, &salt, 1, &mut auth);
        assert_eq!(
            hex::encode_upper(&auth[..32]),
            "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE"
        );
    }

    fn packet(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&1234u32.to_be_bytes());
        p.extend_from_slice(&0xcafe_f00du32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn protect_then_unprotect_gives_the_packet_back_and_a_flipped_bit_fails() {
        for profile in [Profile::AesCm128HmacSha1_80, Profile::AeadAes128Gcm] {
            let key = [7u8; 16];
            let salt = vec![9u8; profile.salt_len()];
            let s = Srtp::new(profile, &key, &salt).unwrap();
            let plain = packet(65535, b"hello world, a payload");
            let mut buf = plain.clone();
            buf.resize(plain.len() + MAX_OVERHEAD, 0);
            let index = (3u64 << 16) | 65535;
            let n = s.protect_rtp(&mut buf, 12, plain.len(), index).unwrap();
            assert_eq!(n, plain.len() + profile.rtp_overhead());
            assert_ne!(buf[12..plain.len()], plain[12..], "{profile:?}: encrypted");
            let mut wire = buf[..n].to_vec();
            let (h, l) = s.unprotect_rtp(&mut wire, n, index).unwrap();
            assert_eq!((h, &wire[..l]), (12, &plain[..]));
            let mut bad = buf[..n].to_vec();
            bad[14] ^= 1;
            assert_eq!(s.unprotect_rtp(&mut bad, n, index), Err(Error::Auth));
            // Another rollover counter authenticates nothing.
            let mut other = buf[..n].to_vec();
            assert_eq!(s.unprotect_rtp(&mut other, n, 65535), Err(Error::Auth));
        }
    }

    #[test]
    fn the_index_estimate_follows_wraps_both_ways() {
        let mut e = IndexEstimate::default();
        assert_eq!(e.guess(65000), 65000);
        e.seen(65000);
        assert_eq!(e.guess(10), (1 << 16) | 10, "wrapped forward");
        e.seen((1 << 16) | 10);
        assert_eq!(e.guess(65500), 65500, "a late packet from before the wrap");
        assert_eq!(e.guess(20), (1 << 16) | 20);
    }
}
