//! Lossy storage under policy and the ONNX Runtime behind the neural codecs, through a real
//! mount.

use crate::util::*;
use std::path::Path;

/// This mount's row of `idcfs status --json`.
fn status_of(m: &Mounted) -> serde_json::Value {
    let out = m.idcfs(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().cloned().unwrap_or_default();
    let store = m.store.display().to_string();
    rows.into_iter()
        .find(|r| r.to_string().contains(&store))
        .unwrap_or_else(|| panic!("no status row for {store}: {v}"))
}

fn write_and_check(m: &Mounted) {
    let p = m.path("f.bin");
    let d = data(7, 300_000);
    std::fs::write(&p, &d).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), d);
}

/// A runtime that cannot be loaded is reported (log and status) and nothing else breaks; the
/// machine's runtime (the venv `.ci/run` creates) is found and reported by default.
#[test]
fn onnx_runtime_absent_is_reported_and_harmless_present_is_found() {
    let mut m = Mounted::with_args(&["--ort-lib", "/nonexistent/libonnxruntime.so.1"]);
    write_and_check(&m);
    let st = status_of(&m).to_string();
    assert!(
        st.contains("unavailable") && st.contains("/nonexistent"),
        "{st}"
    );
    let log = m.log_text();
    assert_eq!(
        log.matches("ONNX Runtime unavailable").count(),
        1,
        "one warning in the log:\n{log}"
    );
    let out = m.idcfs(&["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ONNX Runtime: unavailable"));
    m.unmount();

    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let m = Mounted::with_args(&["--device", "cpu"]);
    write_and_check(&m);
    let st = status_of(&m).to_string();
    if st.contains("unavailable") {
        assert!(!ci, "CI=true and ONNX Runtime was not found: {st}");
        eprintln!("NOT RUN (half): ONNX Runtime not installed here: {st}");
        return;
    }
    assert!(
        st.contains("libonnxruntime") && st.contains("(cpu)"),
        "{st}"
    );
    assert!(Path::new(&m.log).exists());
}
