//! Property-based mutation test of `train --config`: TOML text into the
//! command's `TrainArgs`, then `resolve`, must give `Ok` or `Err`, never a
//! panic, whatever the bytes.

use proptest::prelude::*;

use super::train::{resolve, TrainArgs};

const VALID: &str = r#"data = "d.safetensors"
hidden = [512, 256]
activation = "relu"
loss = "xent"
dropout = 0.1
optimizer = "adamw"
momentum = 0.9
nesterov = true
lr = 0.001
schedule = "step:5:0.5"
warmup = 100
l2 = 0.0
weight_decay = 0.01
epochs = 12
batch = 128
seed = 7
threads = 2
normalize = "channel"
validation = "0.1"
out = "run"
checkpoint_every = 2
metrics = "m.jsonl"
"#;

/// Applies `(position, byte, kind)` edits: overwrite, insert or delete.
fn mutate(edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = VALID.as_bytes().to_vec();
    for &(i, b, kind) in edits {
        let n = v.len();
        match kind % 3 {
            0 if n > 0 => v[i % n] = b,
            1 => v.insert(i % (n + 1), b),
            _ if n > 0 => {
                v.remove(i % n);
            }
            _ => {}
        }
    }
    v
}

#[test]
fn the_valid_config_resolves() {
    let args: TrainArgs = toml::from_str(VALID).unwrap();
    resolve(&args).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_mutations_never_panic(
        edits in proptest::collection::vec((any::<usize>(), prop_oneof![any::<u8>(), Just(b'"'), Just(b'='), Just(b'['), Just(b'-'), Just(b'9')], any::<u8>()), 1..6)
    ) {
        let bytes = mutate(&edits);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(args) = toml::from_str::<TrainArgs>(text) {
                let _ = resolve(&args);
            }
        }
    }

    #[test]
    fn extreme_values_never_panic(
        key in prop_oneof![Just("hidden"), Just("dropout"), Just("lr"), Just("epochs"), Just("batch"), Just("threads"), Just("warmup"), Just("validation"), Just("schedule"), Just("momentum"), Just("seed")],
        value in prop_oneof![
            Just("-1".to_string()), Just("0".to_string()), Just("1e309".to_string()), Just("nan".to_string()),
            Just("inf".to_string()), Just("18446744073709551616".to_string()), Just("[0]".to_string()),
            Just("[]".to_string()), Just("\"step:0:0\"".to_string()), Just("\"1e400\"".to_string()),
            any::<i64>().prop_map(|x| x.to_string()), any::<f64>().prop_map(|x| format!("{x:?}")),
        ],
    ) {
        let text = format!("{key} = {value}\n");
        if let Ok(args) = toml::from_str::<TrainArgs>(&text) {
            let _ = resolve(&args);
        }
    }
}
