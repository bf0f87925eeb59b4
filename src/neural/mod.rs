//! The ONNX Runtime: finding and loading `libonnxruntime.so` once per process, choosing the
//! execution device, and sharing one session per model.
//!
//! The runtime is a shared library loaded at run time (`ort` with `load-dynamic`): a build of
//! idcfs never downloads or links it. It is looked for, first match wins, in
//! 1. the path given by the configuration (`[neural] library`) or `--ort-lib`,
//! 2. `$IDCFS_ORT_LIB`, then `$ORT_DYLIB_PATH` (the variable `ort` itself documents),
//! 3. the `onnxruntime` wheel of a Python environment: `$IDCFS_VENV`, `/opt/idcfs/venv` (the
//!    README's setup) and `$HOME/.cache/idcfs-ci/venv` (what `.ci/run` creates).
//!
//! Invariants:
//! - Loading happens at most once per process (ONNX Runtime's API table is process-global);
//!   its outcome, success or the reason for failure, is kept and reported by `status()`.
//! - A missing or broken runtime is never an error for the filesystem: the neural codecs
//!   report it through `Codec::availability` and everything else works. It is logged once.
//! - A model is identified by the BLAKE3 hash of its bytes; one session per model is created
//!   on first use and shared (runs are serialized on it: `Session::run` takes `&mut`).
//! - Sessions run with a bounded number of intra-op threads (`intra_threads`, default 1) and
//!   no inter-op pool, so neural work never takes more than its share of the cores from the
//!   FUSE threads.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// Where models run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// CUDA when this build has the `cuda` feature and the loaded runtime offers the CUDA
    /// execution provider; the CPU otherwise.
    #[default]
    Auto,
    Cpu,
    /// CUDA or nothing: the runtime counts as unavailable when CUDA cannot be used.
    Cuda,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }

    pub fn parse(s: &str) -> Result<Device, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!("device {other:?} (allowed: auto, cpu, cuda)")),
        }
    }
}

/// How to load the runtime (mount options and config).
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// An explicit `libonnxruntime.so` (config or command line); searched for when None.
    pub library: Option<PathBuf>,
    pub device: Device,
    /// Intra-op threads of each session (at least 1).
    pub intra_threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            library: None,
            device: Device::Auto,
            intra_threads: 1,
        }
    }
}

/// One output of a model run: its shape and values.
pub type Output = (Vec<usize>, Vec<f32>);

/// A loaded ONNX Runtime.
pub struct Runtime {
    /// The library that was loaded.
    pub library: PathBuf,
    /// The device sessions run on: "cpu" or "cuda".
    pub device: &'static str,
    intra_threads: usize,
    env: ort::environment::Environment,
    sessions: Mutex<HashMap<[u8; 32], Arc<Mutex<ort::session::Session>>>>,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// Load the runtime with `opts` unless it was loaded already (the first call decides), and
/// say once in the log what happened.
pub fn init(opts: &RuntimeOptions) -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            let r = load(opts);
            match &r {
                Ok(rt) => tracing::info!(
                    library = %rt.library.display(),
                    device = rt.device,
                    "ONNX Runtime loaded: neural codecs available"
                ),
                Err(why) => {
                    tracing::warn!("ONNX Runtime unavailable, neural codecs disabled: {why}")
                }
            }
            r
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The runtime if it was loaded (or failed to) already; None before anything asked for it.
/// Lets a codec say whether it can encode without loading the runtime with default options
/// before the mount's own options are known.
pub fn loaded() -> Option<Result<&'static Runtime, String>> {
    RUNTIME.get().map(|r| r.as_ref().map_err(Clone::clone))
}

/// The runtime, loading it with default options on first use.
pub fn runtime() -> Result<&'static Runtime, String> {
    init(&RuntimeOptions::default())
}

/// One line for `idcfs status`: where the runtime came from and on what it runs, or why it
/// is unavailable ("not loaded" before anything asked for it).
pub fn status() -> String {
    match RUNTIME.get() {
        None => "not loaded".into(),
        Some(Ok(rt)) => format!("{} ({})", rt.library.display(), rt.device),
        Some(Err(why)) => format!("unavailable: {why}"),
    }
}

/// Candidate library paths in search order (see the module doc). A path that was named
/// (`explicit`, then the environment variables) is the only candidate: a named runtime that
/// does not load must not be silently replaced by another one.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = explicit {
        return vec![p.to_path_buf()];
    }
    for var in ["IDCFS_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return vec![PathBuf::from(p)];
        }
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("IDCFS_VENV").filter(|p| !p.is_empty()) {
        venvs.push(PathBuf::from(p));
    }
    venvs.push(PathBuf::from("/opt/idcfs/venv"));
    if let Some(h) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        venvs.push(PathBuf::from(h).join(".cache/idcfs-ci/venv"));
    }
    venvs.iter().flat_map(|v| wheel_libraries(v)).collect()
}

/// `libonnxruntime.so*` files of the `onnxruntime` wheel in the Python environment `venv`,
/// newest file name last-sorted first.
fn wheel_libraries(venv: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(libs) = std::fs::read_dir(venv.join("lib")) else {
        return out;
    };
    for py in libs.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(files) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut found: Vec<PathBuf> = files
            .flatten()
            .map(|f| f.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
            })
            .collect();
        found.sort();
        found.reverse();
        out.extend(found);
    }
    out
}

fn load(opts: &RuntimeOptions) -> Result<Runtime, String> {
    let cands = candidates(opts.library.as_deref());
    let library = cands.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        if cands.is_empty() {
            "no libonnxruntime.so found (set IDCFS_ORT_LIB, or install the onnxruntime wheel in /opt/idcfs/venv)".to_string()
        } else {
            format!(
                "no libonnxruntime.so at {} (set IDCFS_ORT_LIB, or install the onnxruntime wheel in /opt/idcfs/venv)",
                cands
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    })?;
    // `ort` may panic on a library with an unexpected API version: never let that end the
    // mount.
    let lib = library.clone();
    let env = std::panic::catch_unwind(move || -> Result<ort::environment::Environment, String> {
        let b = ort::init_from(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        b.with_name("idcfs")
            .build()
            .map_err(|e| format!("{}: {e}", lib.display()))
    })
    .map_err(|_| format!("{}: loading panicked", library.display()))??;
    let device = pick_device(opts.device)?;
    Ok(Runtime {
        library,
        device,
        intra_threads: opts.intra_threads.max(1),
        env,
        sessions: Mutex::new(HashMap::new()),
    })
}

/// The device to run on under `want`, or why `want` cannot be met.
fn pick_device(want: Device) -> Result<&'static str, String> {
    match want {
        Device::Cpu => Ok("cpu"),
        Device::Auto => Ok(if cuda_available() { "cuda" } else { "cpu" }),
        Device::Cuda if cuda_available() => Ok("cuda"),
        Device::Cuda if cfg!(feature = "cuda") => Err(
            "--device cuda: the loaded ONNX Runtime has no CUDA execution provider (install onnxruntime-gpu)".into(),
        ),
        Device::Cuda => Err("--device cuda: this idcfs was built without the `cuda` feature".into()),
    }
}

#[cfg(feature = "cuda")]
fn cuda_available() -> bool {
    use ort::ep::ExecutionProvider;
    ort::ep::CUDA::is_available().unwrap_or(false)
}

#[cfg(not(feature = "cuda"))]
fn cuda_available() -> bool {
    false
}

impl Runtime {
    /// The shared session of the model `bytes` (created on first use).
    pub fn session(&self, bytes: &[u8]) -> Result<Arc<Mutex<ort::session::Session>>, String> {
        let key = *blake3::hash(bytes).as_bytes();
        if let Some(s) = self.sessions.lock().get(&key) {
            return Ok(s.clone());
        }
        let s = Arc::new(Mutex::new(self.build_session(bytes)?));
        // Two threads may have built one each: keep the first, drop the other.
        Ok(self.sessions.lock().entry(key).or_insert(s).clone())
    }

    fn build_session(&self, bytes: &[u8]) -> Result<ort::session::Session, String> {
        self.build_session_with(bytes, self.intra_threads)
    }

    fn build_session_with(
        &self,
        bytes: &[u8],
        threads: usize,
    ) -> Result<ort::session::Session, String> {
        let e = |e: ort::Error| format!("creating an ONNX Runtime session: {e}");
        let b = ort::session::Session::builder(&self.env).map_err(e)?;
        let b = b
            .with_intra_threads(threads.max(1))
            .map_err(|x| e(x.into()))?
            .with_inter_threads(1)
            .map_err(|x| e(x.into()))?;
        let mut b = self.with_device(b)?;
        b.commit_from_memory(bytes).map_err(e)
    }

    #[cfg(feature = "cuda")]
    fn with_device(
        &self,
        b: ort::session::builder::SessionBuilder,
    ) -> Result<ort::session::builder::SessionBuilder, String> {
        if self.device != "cuda" {
            return Ok(b);
        }
        b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|x| format!("registering the CUDA execution provider: {x}"))
    }

    #[cfg(not(feature = "cuda"))]
    fn with_device(
        &self,
        b: ort::session::builder::SessionBuilder,
    ) -> Result<ort::session::builder::SessionBuilder, String> {
        Ok(b)
    }

    /// Run the model `bytes` on one f32 tensor and return every output (shape, values), in
    /// the model's output order. `threads`: None runs on the shared session; Some(n) on a
    /// private session with n intra-op threads, dropped afterwards (used to prove that a
    /// model's results do not depend on the thread count).
    pub fn run_f32_outputs(
        &self,
        model: &[u8],
        threads: Option<usize>,
        shape: &[usize],
        input: Vec<f32>,
    ) -> Result<Vec<Output>, String> {
        let s = match threads {
            None => self.session(model)?,
            Some(n) => Arc::new(Mutex::new(self.build_session_with(model, n)?)),
        };
        let e = |e: ort::Error| format!("running a model: {e}");
        let t = ort::value::Tensor::from_array((shape.to_vec(), input)).map_err(e)?;
        let mut s = s.lock();
        let out = s.run(ort::inputs![t]).map_err(e)?;
        let mut v = Vec::with_capacity(out.len());
        for (_, value) in out.iter() {
            let (shape, vals) = value.try_extract_tensor::<f32>().map_err(e)?;
            v.push((
                shape.iter().map(|&d| d.max(0) as usize).collect(),
                vals.to_vec(),
            ));
        }
        Ok(v)
    }

    /// Run the model `bytes` on one f32 tensor and return its first output (shape, values).
    pub fn run_f32(
        &self,
        model: &[u8],
        shape: &[usize],
        input: Vec<f32>,
    ) -> Result<(Vec<usize>, Vec<f32>), String> {
        let s = self.session(model)?;
        let e = |e: ort::Error| format!("running a model: {e}");
        let t = ort::value::Tensor::from_array((shape.to_vec(), input)).map_err(e)?;
        let mut s = s.lock();
        let out = s.run(ort::inputs![t]).map_err(e)?;
        let (shape, vals) = out[0].try_extract_tensor::<f32>().map_err(e)?;
        let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
        Ok((shape, vals.to_vec()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda] {
            assert_eq!(Device::parse(d.name()).ok(), Some(d));
        }
        assert!(Device::parse("gpu").is_err());
        // Without the cuda feature, CUDA can never be picked and asking for it says why.
        if !cfg!(feature = "cuda") {
            assert_eq!(pick_device(Device::Auto).ok(), Some("cpu"));
            assert!(pick_device(Device::Cuda).is_err_and(|e| e.contains("feature")));
        }
    }

    /// The runtime of this machine (the venv the README's test command and `.ci/run` create,
    /// or `IDCFS_ORT_LIB`). A missing runtime fails the test: it is never skipped.
    pub(crate) fn runtime_required(test: &str) -> &'static Runtime {
        match runtime() {
            Ok(rt) => rt,
            Err(why) => panic!("{test}: ONNX Runtime is missing: {why}"),
        }
    }

    #[test]
    fn runtime_runs_the_selftest_model_with_one_shared_session() {
        let rt = runtime_required("runtime_runs_the_selftest_model");
        let model = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/selftest/affine.onnx"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let (shape, y) = rt
            .run_f32(&model, &[4], vec![0.0, 1.0, -2.5, 10.0])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shape, vec![4]);
        assert_eq!(y, vec![1.0, 3.0, -4.0, 21.0]);
        assert_eq!(rt.device, "cpu");
        let a = rt.session(&model).unwrap_or_else(|e| panic!("{e}"));
        let b = rt.session(&model).unwrap_or_else(|e| panic!("{e}"));
        assert!(Arc::ptr_eq(&a, &b), "one session per model");
        assert!(status().contains("libonnxruntime"), "{}", status());
        // Garbage is refused with an error, not a crash.
        assert!(rt.session(b"not a model").is_err());
    }

    #[test]
    fn wheel_layout_is_found() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let capi = d
            .path()
            .join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(capi.join("libonnxruntime.so.1.32.0"), b"x")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"x")
            .unwrap_or_else(|e| panic!("{e}"));
        let found = wheel_libraries(d.path());
        assert_eq!(found, vec![capi.join("libonnxruntime.so.1.32.0")]);
    }
}
