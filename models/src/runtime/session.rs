//! ONNX Runtime sessions: creating one with the options, and checking its inputs and outputs
//! against the manifest.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use ort::ep::ExecutionProvider as _;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::library::LoadedRuntime;
use super::options::{ExecutionProvider, RuntimeOptions};
use super::panic_message;
use crate::error::{Encoder, Error, Result};

/// Where a session's ONNX model comes from.
#[derive(Clone, Copy)]
pub(super) enum OnnxSource<'a> {
    /// A file, read whole and handed to ONNX Runtime as bytes (so a model whose weights are in
    /// separate external-data files is not supported: a bundle is exactly its three files).
    File(&'a Path),
    /// The model's bytes (ONNX Runtime copies what it needs; nothing touches the file system).
    Memory(&'a [u8]),
}

/// A session for `source`; `path` names the model in messages.
pub(super) fn create_session(
    rt: &LoadedRuntime,
    source: OnnxSource<'_>,
    path: &Path,
    encoder: Encoder,
    options: &RuntimeOptions,
) -> Result<Session> {
    // The file is read here, not by ONNX Runtime: only a regular file is read (ONNX Runtime would
    // block forever on a FIFO), checked on the opened handle so it cannot be swapped in between.
    let read;
    let bytes = match source {
        OnnxSource::File(file) => {
            read = crate::bundle::read_regular_file(file).map_err(|e| Error::OnnxLoad {
                encoder,
                path: path.to_path_buf(),
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    "file not found".into()
                } else {
                    e.to_string()
                },
            })?;
            &read[..]
        }
        OnnxSource::Memory(bytes) => bytes,
    };
    let runtime_err = |message: String| Error::Runtime { encoder, message };
    let made = catch_unwind(AssertUnwindSafe(|| -> Result<Session> {
        let mut builder = Session::builder(&rt.env).map_err(|e| runtime_err(e.to_string()))?;
        if options.intra_threads > 0 {
            builder = builder
                .with_intra_threads(options.intra_threads)
                .map_err(|e| {
                    runtime_err(format!(
                        "setting {} intra-op threads: {e}",
                        options.intra_threads
                    ))
                })?;
        }
        // ONNX Runtime's default lets idle workers spin for a long time after an operator; in
        // `embed_molecules` they would hold a core the featurizer threads need between runs. A
        // short spin still bridges the gaps between operators and between one-row runs.
        // (Measured in docs/benchmarks.md, "Encoders".)
        builder = if options.intra_spin_us == 0 {
            builder.with_intra_op_spinning(false)
        } else {
            builder.with_config_entry(
                "session.intra_op.spin_duration_us",
                options.intra_spin_us.to_string(),
            )
        }
        .map_err(|e| runtime_err(format!("setting intra-op spinning: {e}")))?;
        if let ExecutionProvider::Cuda { device_id } = options.execution_provider {
            let unavailable = |reason: String| Error::ExecutionProviderUnavailable {
                provider: "cuda",
                reason,
            };
            let available =
                ort::ep::CUDA::is_available().map_err(|e| unavailable(e.to_string()))?;
            if !available {
                return Err(unavailable(format!(
                    "the ONNX Runtime library {} (version {}) was built without the CUDA execution provider",
                    rt.info.library.display(),
                    rt.info.version
                )));
            }
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default()
                    .with_device_id(device_id)
                    .build()
                    .error_on_failure()])
                .map_err(|e| {
                    unavailable(format!("registering CUDA device {device_id} failed: {e}"))
                })?;
        }
        builder
            .commit_from_memory(bytes)
            .map_err(|e| Error::OnnxLoad {
                encoder,
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }));
    match made {
        Ok(r) => r,
        Err(p) => Err(runtime_err(format!(
            "ONNX Runtime panicked while creating the session: {}",
            panic_message(p)
        ))),
    }
}

fn describe(t: &ValueType) -> String {
    match t {
        ValueType::Tensor { ty, shape, .. } => format!("{ty:?}{:?}", &**shape),
        other => format!("{other:?}"),
    }
}

/// Checks a session's inputs and output against the manifest: `inputs` are
/// `(name, expected width, manifest key)`; `output` is `(name, dim)`.
pub(super) fn check_io(
    session: &Session,
    encoder: Encoder,
    path: &Path,
    inputs: &[(&str, usize, &str)],
    output: (&str, usize),
) -> Result<()> {
    let mismatch = |message: String| Error::BundleMismatch {
        encoder,
        path: path.to_path_buf(),
        message,
    };
    let list = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| format!("{:?}: {}", o.name(), describe(o.dtype())))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let model_inputs = session.inputs();
    let model_outputs = session.outputs();
    let check_2d = |kind: &str,
                    name: &str,
                    t: &ValueType,
                    width: usize,
                    key: &str,
                    width_may_be_dynamic: bool|
     -> Result<()> {
        let ValueType::Tensor { ty, shape, .. } = t else {
            return Err(mismatch(format!(
                "{kind} {name:?} is {}, expected a float32 tensor",
                describe(t)
            )));
        };
        if *ty != TensorElementType::Float32 {
            return Err(mismatch(format!(
                "{kind} {name:?} has element type {ty:?}, expected float32: cast in the model"
            )));
        }
        if shape.len() != 2 {
            return Err(mismatch(format!(
                "{kind} {name:?} has shape {:?}, expected [batch, {width}] (rank 2)",
                &**shape
            )));
        }
        if shape[0] >= 0 {
            return Err(mismatch(format!(
                "{kind} {name:?} has a fixed batch size {} (shape {:?}); export it with a dynamic batch axis",
                shape[0], &**shape
            )));
        }
        if shape[1] != width as i64 && !(width_may_be_dynamic && shape[1] < 0) {
            return Err(mismatch(format!(
                "{kind} {name:?} has shape {:?}, but the manifest's {key} says its width is {width}: \
                 fix the manifest or re-export the model",
                &**shape
            )));
        }
        Ok(())
    };
    for &(name, width, key) in inputs {
        let Some(o) = model_inputs.iter().find(|o| o.name() == name) else {
            return Err(mismatch(format!(
                "the model has no input {name:?} (named by {}); its inputs are [{}]",
                key.split(' ').next().unwrap_or(key),
                list(model_inputs)
            )));
        };
        check_2d("input", name, o.dtype(), width, key, false)?;
    }
    if let Some(extra) = model_inputs
        .iter()
        .find(|o| !inputs.iter().any(|(n, _, _)| *n == o.name()))
    {
        return Err(mismatch(format!(
            "the model has an input {:?} ({}) that the manifest does not feed; its inputs are [{}]{}",
            extra.name(),
            describe(extra.dtype()),
            list(model_inputs),
            if encoder == Encoder::Molecule {
                ": name it in molecule.input_concentration with a matching encoding, or remove it from the model"
            } else {
                ": remove it from the model"
            }
        )));
    }
    let (name, dim) = output;
    let Some(o) = model_outputs.iter().find(|o| o.name() == name) else {
        return Err(mismatch(format!(
            "the model has no output {name:?} (named by {encoder}.output); its outputs are [{}]",
            list(model_outputs)
        )));
    };
    check_2d("output", name, o.dtype(), dim, "embedding.dim", true)
}
