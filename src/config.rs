//! The mount-wide configuration file (TOML), `/etc/idcfs/config.toml` unless `--config`
//! names another.
//!
//! ```toml
//! [policy]            # default policy for the whole mount (same keys as `idcfs policy set`)
//! level = "balanced"  # off | fast | balanced | max | archive
//! lossy = "none"      # or e.g. "image:q=90,audio:q=80"
//! dedup = "off"       # on | off
//!
//! [background]
//! idle_secs = 60      # closed files untouched this long are recompressed in the background
//!
//! [codecs]
//! disabled = []       # codec names never chosen for new data here (they still decode)
//!
//! [neural]
//! library = "/opt/idcfs/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0"
//! device = "auto"     # auto | cpu | cuda (`--device` overrides)
//! threads = 1         # intra-op threads per ONNX Runtime session
//! ```
//! Invariants: an invalid file refuses the mount with a message naming the key; a missing
//! default file means built-in defaults.

use crate::policy::{parse_policy, Policy};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/idcfs/config.toml";

#[derive(Clone, Debug, Default)]
pub struct Config {
    pub policy: Policy,
    pub idle_secs: Option<u64>,
    /// Codecs that must not encode on this mount (by name).
    pub codecs_disabled: Vec<String>,
    /// `[neural]`: how to load ONNX Runtime.
    pub neural: crate::neural::RuntimeOptions,
}

/// Load `path`, or the default file when `path` is None (absent default = defaults).
pub fn load(path: Option<&Path>) -> Result<Config, String> {
    let (p, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Config::default())
        }
        Err(e) => return Err(format!("config {}: {e}", p.display())),
    };
    parse(&text).map_err(|e| format!("config {}: {e}", p.display()))
}

pub fn parse(text: &str) -> Result<Config, String> {
    let v: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut c = Config::default();
    for (section, body) in &v {
        let t = body
            .as_table()
            .ok_or_else(|| format!("[{section}] must be a table"))?;
        match section.as_str() {
            "policy" => {
                let mut parts = Vec::new();
                for (k, val) in t {
                    let s = match val {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Boolean(b) => (if *b { "on" } else { "off" }).to_string(),
                        other => {
                            return Err(format!("policy.{k}: expected a string, found {other}"))
                        }
                    };
                    parts.push(format!("{k}={s}"));
                }
                c.policy = parse_policy(&parts.join(" ")).map_err(|e| format!("[policy]: {e}"))?;
            }
            "background" => {
                for (k, val) in t {
                    match (k.as_str(), val) {
                        ("idle_secs", toml::Value::Integer(n)) if *n >= 0 => {
                            c.idle_secs = Some(*n as u64)
                        }
                        ("idle_secs", other) => {
                            return Err(format!(
                                "background.idle_secs: expected seconds, found {other}"
                            ))
                        }
                        (other, _) => {
                            return Err(format!(
                                "unknown key background.{other} (allowed: idle_secs)"
                            ))
                        }
                    }
                }
            }
            "codecs" => {
                for (k, val) in t {
                    match (k.as_str(), val) {
                        ("disabled", toml::Value::Array(a)) => {
                            let mut names = Vec::new();
                            for v in a {
                                match v {
                                    toml::Value::String(s) => names.push(s.clone()),
                                    other => {
                                        return Err(format!(
                                            "codecs.disabled: expected codec names, found {other}"
                                        ))
                                    }
                                }
                            }
                            // Refuse unknown names now, with the known ones.
                            crate::codec::Registry::with_disabled(&names)
                                .map_err(|e| format!("codecs.disabled: {e}"))?;
                            c.codecs_disabled = names;
                        }
                        ("disabled", other) => {
                            return Err(format!(
                                "codecs.disabled: expected a list of codec names, found {other}"
                            ))
                        }
                        (other, _) => {
                            return Err(format!("unknown key codecs.{other} (allowed: disabled)"))
                        }
                    }
                }
            }
            "neural" => {
                for (k, val) in t {
                    match (k.as_str(), val) {
                        ("library", toml::Value::String(s)) => {
                            c.neural.library = Some(PathBuf::from(s))
                        }
                        ("device", toml::Value::String(s)) => {
                            c.neural.device = crate::neural::Device::parse(s)
                                .map_err(|e| format!("neural.device: {e}"))?
                        }
                        ("threads", toml::Value::Integer(n)) if (1..=256).contains(n) => {
                            c.neural.intra_threads = *n as usize
                        }
                        (k @ ("library" | "device" | "threads"), other) => {
                            return Err(format!("neural.{k}: unexpected value {other}"))
                        }
                        (other, _) => {
                            return Err(format!(
                                "unknown key neural.{other} (allowed: library, device, threads)"
                            ))
                        }
                    }
                }
            }
            other => {
                return Err(format!(
                "unknown section [{other}] (allowed: [policy], [background], [codecs], [neural])"
            ))
            }
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        let c = parse(include_str!("../systemd/config.toml.example"))
            .unwrap_or_else(|e| panic!("systemd/config.toml.example: {e}"));
        assert_eq!(c.neural.device, crate::neural::Device::Auto);
        assert_eq!(c.neural.intra_threads, 1);
    }

    #[test]
    fn parses_and_refuses() {
        let c = parse("[policy]\nlevel = \"max\"\ndedup = true\n[background]\nidle_secs = 5\n")
            .unwrap_or_default();
        assert_eq!(c.policy.to_string(), "level=max dedup=on");
        assert_eq!(c.idle_secs, Some(5));
        let c = parse("[codecs]\ndisabled = [\"jpeg-lepton\"]\n").unwrap_or_default();
        assert_eq!(c.codecs_disabled, vec!["jpeg-lepton".to_string()]);
        let c =
            parse("[neural]\nlibrary = \"/x/libonnxruntime.so\"\ndevice = \"cpu\"\nthreads = 2\n")
                .unwrap_or_default();
        assert_eq!(c.neural.device, crate::neural::Device::Cpu);
        assert_eq!(c.neural.intra_threads, 2);
        assert_eq!(
            c.neural.library.as_deref(),
            Some(Path::new("/x/libonnxruntime.so"))
        );
        for (bad, why) in [
            ("[policy]\nlevel = \"hyper\"", "level 'hyper'"),
            ("[polcy]\n", "unknown section"),
            ("[background]\nidle = 3", "unknown key"),
            ("level = 3", "must be a table"),
            ("[codecs]\ndisabled = [\"nope\"]", "unknown codec"),
            ("[codecs]\ndisabled = \"zstd\"", "list of codec names"),
            ("[neural]\ndevice = \"gpu\"", "neural.device"),
            ("[neural]\nthreads = 0", "neural.threads"),
        ] {
            match parse(bad) {
                Ok(_) => panic!("accepted {bad}"),
                Err(e) => assert!(e.contains(why), "{bad}: {e}"),
            }
        }
    }
}
