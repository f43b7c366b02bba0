//! The segmentation models `remove_background` runs: every `NAME.onnx` in `--model-dir`,
//! loaded and optimised with tract (a pure-Rust ONNX runtime, so the static musl image still
//! builds) once at start, then shared by every image. Nothing is downloaded, ever: operators
//! put the files there (the README lists models that work).
//!
//! A model takes one `[1, 3, H, W]` float input and gives `[1, 1, H, W]` (or `[1, H, W]`)
//! first; U²-Net's six side outputs after it are ignored. Its input size comes from the
//! model when fixed, else from a sidecar; how pixels are normalised is ImageNet's unless a
//! sidecar `NAME.json` says otherwise:
//!
//! ```json
//! {"size": [1024, 1024], "mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use pixelmesh_pipeline::ops::Segmenter;
use pixelmesh_pipeline::ops::remove_background::{Mask, ModelInput, check_model_name};
use serde::Deserialize;
use tract_onnx::prelude::*;

/// Most models one filter loads: each stays in memory.
pub const MAX_MODELS: usize = 16;
/// Largest model file accepted (U²-Net is 176 MB, ISNet 179 MB).
pub const MAX_MODEL_BYTES: u64 = 1 << 30;
/// Largest input side a sidecar may ask for.
pub const MAX_SIDE: u32 = 4096;
/// The input side when neither the model nor a sidecar fixes it: U²-Net's.
pub const DEFAULT_SIDE: u32 = 320;

/// Where the filter finds its segmentation models.
#[derive(Debug, Clone, Default, Args)]
#[group(id = "model_settings")]
pub struct ModelSettings {
    /// A directory of ONNX segmentation models for `remove_background`: each `NAME.onnx` is
    /// the model `NAME`, with an optional `NAME.json` giving its input size and
    /// normalisation. Loaded at start; a file that does not load stops the filter, naming it.
    #[arg(long, env = "PIXELMESH_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

/// A model's optional sidecar, `NAME.json`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    /// `[width, height]` of the input.
    size: Option<[u32; 2]>,
    mean: Option<[f32; 3]>,
    std: Option<[f32; 3]>,
}

struct Model {
    input: ModelInput,
    plan: Arc<TypedRunnableModel>,
}

/// The loaded models, by name.
#[derive(Default)]
pub struct Models {
    models: BTreeMap<String, Model>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.models.keys()).finish()
    }
}

impl Models {
    /// Loads every `*.onnx` in `dir` (other files are skipped); an error names the file.
    pub fn load(dir: &Path) -> anyhow::Result<Models> {
        let mut paths = Vec::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the model directory {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading the model directory {}", dir.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "onnx") {
                paths.push(path);
            }
        }
        paths.sort();
        if paths.len() > MAX_MODELS {
            bail!(
                "the model directory {} holds {} models; at most {MAX_MODELS} are loaded",
                dir.display(),
                paths.len()
            );
        }
        let mut models = BTreeMap::new();
        for path in paths {
            let name = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .unwrap_or_default()
                .to_string();
            check_model_name(&name)
                .map_err(|err| anyhow::anyhow!("model file {}: its name: {err}", path.display()))?;
            let model =
                load_model(&path).with_context(|| format!("model file {}", path.display()))?;
            tracing::info!(
                model = %name,
                width = model.input.width,
                height = model.input.height,
                "segmentation model loaded"
            );
            models.insert(name, model);
        }
        Ok(Models { models })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    fn get(&self, name: &str) -> Result<&Model, String> {
        self.models.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.names().collect();
            format!(
                "this filter has no model {name:?} (it has: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )
        })
    }
}

impl Segmenter for Models {
    fn input(&self, model: &str) -> Result<ModelInput, String> {
        Ok(self.get(model)?.input)
    }

    fn infer(&self, name: &str, tensor: Vec<f32>) -> Result<Mask, String> {
        let model = self.get(name)?;
        let (width, height) = (model.input.width as usize, model.input.height as usize);
        let failed = |err: TractError| format!("model {name:?}: {err}");
        let input = Tensor::from_shape(&[1, 3, height, width], &tensor).map_err(failed)?;
        let outputs = model.plan.run(tvec!(input.into_tvalue())).map_err(failed)?;
        let output = outputs
            .first()
            .ok_or_else(|| format!("model {name:?} gave no output"))?;
        let shape = output.shape();
        // [1, 1, H, W] or [1, H, W]: one plane, whatever leading ones.
        let plane = shape.iter().rev().take(2).product::<usize>();
        if shape.len() < 2 || output.len() != plane {
            return Err(format!(
                "model {name:?} gave an output of shape {shape:?}; a mask of one plane was expected"
            ));
        }
        let (mask_h, mask_w) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let values = output
            .cast_to::<f32>()
            .map_err(failed)?
            .to_plain_array_view::<f32>()
            .map_err(failed)?
            .iter()
            .copied()
            .collect();
        Ok(Mask {
            width: mask_w as u32,
            height: mask_h as u32,
            values,
        })
    }
}

/// Reads, sizes and optimises one model: its input is fixed to `[1, 3, H, W]` float.
fn load_model(path: &Path) -> anyhow::Result<Model> {
    let bytes = std::fs::metadata(path)?.len();
    if bytes > MAX_MODEL_BYTES {
        bail!("{bytes} bytes; at most {MAX_MODEL_BYTES} are loaded");
    }
    let sidecar = read_sidecar(&path.with_extension("json"))?;
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .map_err(|err| anyhow::anyhow!("not a model tract can read: {err}"))?;
    let declared = model
        .input_fact(0)
        .ok()
        .and_then(|fact| fact.shape.as_concrete_finite().ok().flatten())
        .filter(|dims| dims.len() == 4);
    if let Some(dims) = &declared
        && dims[1] != 3
    {
        bail!("its input has shape {dims:?}; [1, 3, H, W] (RGB) was expected");
    }
    let (width, height) = match (sidecar.size, &declared) {
        (Some([w, h]), _) => (w, h),
        (None, Some(dims)) => (dims[3] as u32, dims[2] as u32),
        (None, None) => (DEFAULT_SIDE, DEFAULT_SIDE),
    };
    if !(1..=MAX_SIDE).contains(&width) || !(1..=MAX_SIDE).contains(&height) {
        bail!("an input of {width}x{height}; each side must be 1 to {MAX_SIDE}");
    }
    let shape = [1, 3, height as usize, width as usize];
    let plan = model
        .with_input_fact(0, f32::fact(shape).into())
        .and_then(|model| model.into_optimized())
        .and_then(|model| model.into_runnable())
        .map_err(|err| anyhow::anyhow!("cannot run it at {width}x{height}: {err}"))?;
    let std = sidecar.std.unwrap_or(ModelInput::IMAGENET_STD);
    if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!("std must be three numbers above 0, got {std:?}");
    }
    let mean = sidecar.mean.unwrap_or(ModelInput::IMAGENET_MEAN);
    if mean.iter().any(|m| !m.is_finite()) {
        bail!("mean must be three numbers, got {mean:?}");
    }
    Ok(Model {
        input: ModelInput {
            width,
            height,
            mean,
            std,
        },
        plan,
    })
}

fn read_sidecar(path: &Path) -> anyhow::Result<Sidecar> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("its sidecar {}", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Sidecar::default()),
        Err(err) => Err(err).with_context(|| format!("its sidecar {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixelmesh_pipeline::ops::RemoveBackground;
    use pixelmesh_pipeline::testdata::disc;

    /// Builds the tests' model (tests/models/make_segmenter.py, with PyPI's onnx) as
    /// `dir/NAME.onnx`.
    fn make_model(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = root.join(".tools/venv/bin/python");
        let python = if venv.is_file() {
            venv
        } else {
            PathBuf::from("python3")
        };
        let out = dir.join(format!("{name}.onnx"));
        let status = std::process::Command::new(&python)
            .arg(root.join("tests/models/make_segmenter.py"))
            .arg(&out)
            .args(args)
            .status()
            .expect("running python: source scripts/tools.sh");
        assert!(status.success(), "make_segmenter.py failed");
        out
    }

    /// A red disc at the centre of a green field.
    #[test]
    fn a_model_loads_with_its_size_and_segments_what_it_was_built_to() {
        let dir = tempfile::tempdir().unwrap();
        make_model(dir.path(), "red", &["--size", "48"]);
        make_model(dir.path(), "open", &["--dynamic"]);
        std::fs::write(dir.path().join("open.json"), r#"{"size": [40, 30]}"#).unwrap();
        make_model(dir.path(), "plain", &["--dynamic"]);
        std::fs::write(dir.path().join("notes.txt"), "not a model").unwrap();
        let models = Models::load(dir.path()).unwrap();
        assert_eq!(models.names().collect::<Vec<_>>(), ["open", "plain", "red"]);
        let size = |name: &str| {
            let input = models.input(name).unwrap();
            (input.width, input.height)
        };
        assert_eq!(size("red"), (48, 48), "from the model");
        assert_eq!(size("open"), (40, 30), "from the sidecar");
        assert_eq!(size("plain"), (DEFAULT_SIDE, DEFAULT_SIDE), "the default");
        assert_eq!(models.input("red").unwrap().mean, ModelInput::IMAGENET_MEAN);

        for name in ["red", "open"] {
            let out = RemoveBackground::new(name, true)
                .unwrap()
                .apply(disc(300, 200, 60.0), &models)
                .unwrap();
            let alpha = |x: u32, y: u32| out.data()[((y * 300 + x) * 4 + 3) as usize];
            assert_eq!(alpha(150, 100), 255, "{name}: the disc's centre");
            // Not quite 0: the model's 3x3 convolution pads its border with zeros.
            assert!(alpha(3, 3) <= 5, "{name}: a corner: {}", alpha(3, 3));
            assert_eq!(alpha(150, 20), 0, "{name}: the background");
            assert!(alpha(150, 100 - 50) > 230, "{name}: inside the rim");
            assert!(alpha(150, 100 - 72) < 25, "{name}: outside the rim");
        }
    }

    #[test]
    fn the_first_output_is_the_mask_at_the_models_size() {
        let dir = tempfile::tempdir().unwrap();
        make_model(dir.path(), "red", &["--size", "16"]);
        let models = Models::load(dir.path()).unwrap();
        let mask = models.infer("red", vec![0.0; 3 * 16 * 16]).unwrap();
        assert_eq!((mask.width, mask.height), (16, 16));
        // A zero input: sigmoid(0) everywhere, where the side output would also be 0.5, but
        // a red input tells them apart: the mask saturates, the side output does not.
        assert!(mask.values.iter().all(|v| (v - 0.5).abs() < 1e-6));
        let mut red = vec![0.0; 3 * 256];
        red[..256].fill(2.0);
        let mask = models.infer("red", red).unwrap();
        let expected = 1.0 / (1.0 + (-8.0f32).exp());
        assert!(
            (mask.values[8 * 16 + 8] - expected).abs() < 1e-5,
            "{:?}",
            mask.values[136]
        );
        let err = models.infer("blue", vec![0.0; 3]).unwrap_err();
        assert_eq!(err, "this filter has no model \"blue\" (it has: red)");
    }

    #[test]
    fn bad_files_and_names_stop_the_load_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.onnx"), b"not protobuf at all").unwrap();
        let err = format!("{:#}", Models::load(dir.path()).unwrap_err());
        assert!(
            err.contains("broken.onnx") && err.contains("not a model"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        make_model(dir.path(), "Upper", &[]);
        let err = format!("{:#}", Models::load(dir.path()).unwrap_err());
        assert!(err.contains("Upper.onnx: its name: model must be"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        make_model(dir.path(), "red", &["--dynamic"]);
        std::fs::write(
            dir.path().join("red.json"),
            r#"{"size": [1, 1], "colour": 3}"#,
        )
        .unwrap();
        let err = format!("{:#}", Models::load(dir.path()).unwrap_err());
        assert!(
            err.contains("red.json") && err.contains("unknown field"),
            "{err}"
        );
        std::fs::write(dir.path().join("red.json"), r#"{"std": [1, 0, 1]}"#).unwrap();
        let err = format!("{:#}", Models::load(dir.path()).unwrap_err());
        assert!(err.contains("std must be three numbers above 0"), "{err}");

        let err = format!(
            "{:#}",
            Models::load(Path::new("/nonexistent/models")).unwrap_err()
        );
        assert!(
            err.contains("reading the model directory /nonexistent/models"),
            "{err}"
        );
    }
}
