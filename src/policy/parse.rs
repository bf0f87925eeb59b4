//! Policy text ↔ `Policy`. Refusals say which key was wrong, why, and what is allowed.

use super::{Level, Medium, Policy, Quality};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown policy key '{0}' (allowed: level, lossy, dedup)")]
    UnknownKey(String),
    #[error("'{0}' is not key=value (example: level=max)")]
    NotKeyValue(String),
    #[error("level '{0}' is not one of off, fast, balanced, max, archive")]
    BadLevel(String),
    #[error("dedup '{0}' is not on or off")]
    BadDedup(String),
    #[error("lossy '{0}': {1} (syntax: lossy=none, or MEDIUM:q=1..100 / image:psnr=20..80, comma-separated; media: image, audio)")]
    BadLossy(String, String),
    #[error("key '{0}' is given twice")]
    Duplicate(String),
}

/// Parse `key=value` pairs separated by spaces (or newlines).
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    let mut p = Policy::default();
    let mut seen = Vec::new();
    for item in text.split_whitespace() {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| PolicyError::NotKeyValue(item.to_string()))?;
        if seen.contains(&k) {
            return Err(PolicyError::Duplicate(k.to_string()));
        }
        seen.push(k);
        match k {
            "level" => {
                p.level = Some(
                    Level::ALL
                        .into_iter()
                        .find(|l| l.name() == v)
                        .ok_or_else(|| PolicyError::BadLevel(v.to_string()))?,
                )
            }
            "dedup" => {
                p.dedup = Some(match v {
                    "on" | "true" | "yes" => true,
                    "off" | "false" | "no" => false,
                    _ => return Err(PolicyError::BadDedup(v.to_string())),
                })
            }
            "lossy" => p.lossy = Some(parse_lossy(v)?),
            other => return Err(PolicyError::UnknownKey(other.to_string())),
        }
    }
    Ok(p)
}

fn parse_lossy(v: &str) -> Result<BTreeMap<Medium, Quality>, PolicyError> {
    let bad = |why: &str| PolicyError::BadLossy(v.to_string(), why.to_string());
    let mut out = BTreeMap::new();
    if v == "none" {
        return Ok(out);
    }
    for part in v.split(',') {
        let (m, q) = part
            .split_once(':')
            .ok_or_else(|| bad("each medium needs a quality target, like image:q=90"))?;
        let medium = match m {
            "image" => Medium::Image,
            "audio" => Medium::Audio,
            _ => return Err(bad(&format!("unknown medium '{m}'"))),
        };
        let (qk, qv) = q
            .split_once('=')
            .ok_or_else(|| bad("quality must be q=N or psnr=N"))?;
        let quality = match qk {
            "q" => {
                let n: u64 = qv
                    .parse()
                    .map_err(|_| bad(&format!("q '{qv}' is not a whole number")))?;
                if !(1..=100).contains(&n) {
                    return Err(bad(&format!("q={n} is outside 1..100")));
                }
                Quality::Q(n as u8)
            }
            "psnr" => {
                if medium != Medium::Image {
                    return Err(bad("psnr targets apply to images only"));
                }
                let x: f32 = qv
                    .parse()
                    .map_err(|_| bad(&format!("psnr '{qv}' is not a number")))?;
                if !(20.0..=80.0).contains(&x) {
                    return Err(bad(&format!(
                        "psnr={x} dB is impossible to promise or meaningless (allowed 20..80)"
                    )));
                }
                Quality::Psnr(x)
            }
            _ => return Err(bad(&format!("unknown quality measure '{qk}'"))),
        };
        if out.insert(medium, quality).is_some() {
            return Err(bad(&format!("medium '{m}' appears twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(parse_policy("").is_ok_and(|p| p.is_empty()));
        assert!(parse_policy("level=archive dedup=off lossy=image:psnr=42,audio:q=80").is_ok());
        let cases = [
            ("color=red", "unknown policy key 'color'"),
            ("level", "not key=value"),
            ("level=ultra", "level 'ultra'"),
            ("dedup=maybe", "dedup 'maybe'"),
            ("lossy=image", "quality target"),
            ("lossy=video:q=50", "unknown medium 'video'"),
            ("lossy=image:q=0", "outside 1..100"),
            ("lossy=audio:psnr=40", "images only"),
            ("lossy=image:psnr=200", "impossible"),
            ("level=max level=fast", "twice"),
        ];
        for (text, want) in cases {
            match parse_policy(text) {
                Ok(p) => panic!("{text} accepted as {p:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{text}: {e}"),
            }
        }
    }
}
