//! Checkpoint and model loading from bytes. When the input is a valid
//! safetensors file carrying a `data_crc32`, the checksum is recomputed and
//! written back first (the header re-serialised and padded), so that the
//! fuzzer reaches the checks behind the CRC instead of stopping at it.
#![no_main]
use std::path::Path;

use fastnn::{checkpoint, tensorfile};
use libfuzzer_sys::fuzz_target;

fn fix_crc(data: &[u8]) -> Option<Vec<u8>> {
    let h = tensorfile::parse(data).ok()?;
    let n = u64::from_le_bytes(data[..8].try_into().ok()?) as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&data[8..8 + n]).ok()?;
    let crc = format!("{:08x}", crc32fast::hash(&data[h.data_start..]));
    json.get_mut("__metadata__")?
        .as_object_mut()?
        .insert("data_crc32".into(), crc.into());
    let mut text = json.to_string();
    // Keep the data section where it was: pad to the old header length.
    if text.len() > n {
        return None;
    }
    while text.len() < n {
        text.push(' ');
    }
    let mut out = data[..8].to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&data[h.data_start..]);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let bytes = fix_crc(data).unwrap_or_else(|| data.to_vec());
    let _ = checkpoint::load_bytes(Path::new("checkpoint.safetensors"), bytes.clone());
    let _ = checkpoint::load_model_bytes(Path::new("model.safetensors"), bytes);
});
