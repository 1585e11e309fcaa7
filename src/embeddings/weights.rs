//! The model's weights, read from its safetensors file one tensor at a time
//! with positioned reads, converted to f32 as they come.
//!
//! candle's memory-mapped loader made three copies of each tensor resident
//! at once (the file's pages, candle's tensor, the encoder's own vector):
//! loading was the service's peak, 80 MiB above its steady state. Read this
//! way, the file's pages stay in the page cache, outside the process, and
//! only the encoder's copy and a 1 MiB buffer are resident.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use safetensors::tensor::{Dtype, Metadata};

/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

/// A safetensors file, its header read.
pub struct Weights {
    file: File,
    /// Where the tensors' bytes start: after the 8-byte length and the header.
    data_start: u64,
    len: u64,
    metadata: Metadata,
}

impl Weights {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let mut n = [0u8; 8];
        file.read_exact_at(&mut n, 0)
            .map_err(|e| format!("the header's length: {e}"))?;
        let n = u64::from_le_bytes(n);
        // safetensors' own bound on a header (100 MB).
        if n > 100_000_000 || 8 + n > len {
            return Err(format!("a header of {n} bytes in a file of {len}"));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact_at(&mut header, 8)
            .map_err(|e| format!("the header: {e}"))?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| format!("the header: {e}"))?;
        Ok(Self {
            file,
            data_start: 8 + n,
            len,
            metadata,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The tensor `name`, of `shape`, as f32 (from f32, f16 or bf16).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| format!("no tensor {name}"))?;
        if info.shape != shape {
            return Err(format!(
                "{name} has the shape {:?}, not {shape:?}",
                info.shape
            ));
        }
        let count: usize = shape.iter().product();
        let size = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => return Err(format!("{name} is {other:?}: f32, f16 or bf16 only")),
        };
        let (start, end) = info.data_offsets;
        if end.checked_sub(start) != Some(count * size) || self.data_start + end as u64 > self.len {
            return Err(format!(
                "{name}: bytes {start}..{end} do not hold {count} values inside the file"
            ));
        }
        let mut out = Vec::with_capacity(count);
        let mut buf = vec![0u8; CHUNK.min(count * size)];
        let mut at = start;
        while at < end {
            let take = buf.len().min(end - at);
            let bytes = &mut buf[..take];
            self.file
                .read_exact_at(bytes, self.data_start + at as u64)
                .map_err(|e| format!("{name}: {e}"))?;
            match info.dtype {
                Dtype::F32 => out.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                Dtype::F16 => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                _ => out.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
            }
            at += take;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written by the safetensors crate reads back, in every dtype
    /// it takes; a wrong shape, a missing name, a short file are errors.
    #[test]
    fn reads_back_what_safetensors_wrote() {
        use safetensors::tensor::TensorView;
        let values: Vec<f32> = (0..3000).map(|i| i as f32 / 8.0 - 100.0).collect();
        let f32s: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let tensors = [
            (
                "a",
                TensorView::new(Dtype::F32, vec![3, 1000], &f32s).unwrap(),
            ),
            ("b", TensorView::new(Dtype::F16, vec![3000], &f16s).unwrap()),
            (
                "c",
                TensorView::new(Dtype::BF16, vec![1000, 3], &bf16s).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let dir = std::env::temp_dir().join(format!("weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();

        let w = Weights::open(&path).unwrap();
        assert!(w.contains("a") && !w.contains("d"));
        assert_eq!(w.get("a", &[3, 1000]).unwrap(), values);
        // Within half a step of each format (11 and 8 bits of precision).
        for (name, shape, precision) in [("b", vec![3000], 1e-3), ("c", vec![1000, 3], 8e-3)] {
            let got = w.get(name, &shape).unwrap();
            assert_eq!(got.len(), values.len());
            for (g, v) in got.iter().zip(&values) {
                assert!((g - v).abs() <= precision * v.abs(), "{name}: {g} for {v}");
            }
        }
        assert!(w.get("a", &[1000, 3]).unwrap_err().contains("shape"));
        assert!(w.get("d", &[1]).unwrap_err().contains("no tensor"));

        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let short = Weights::open(&path).unwrap();
        let errors: Vec<String> = [
            ("a", vec![3, 1000]),
            ("b", vec![3000]),
            ("c", vec![1000, 3]),
        ]
        .iter()
        .filter_map(|(name, shape)| short.get(name, shape).err())
        .collect();
        assert!(
            errors.len() == 1 && errors[0].contains("inside the file"),
            "the last tensor runs past the end: {errors:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
