//! What the Rust peers of the comparison (candle, burn) share: the command
//! line, the dataset file, a small seeded generator and the median. Each
//! peer includes this file with `#[path]`, so that both stay standalone
//! crates outside fastnn's build.

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

pub struct Args {
    pub data: String,
    pub hidden: Vec<usize>,
    pub batch: usize,
    pub threads: usize,
    pub epochs: usize,
    pub seed: u64,
    pub lr: f64,
}

pub fn parse_args() -> Result<Args> {
    let mut a = Args {
        data: String::new(),
        hidden: vec![1024, 512],
        batch: 128,
        threads: 2,
        epochs: 4,
        seed: 1,
        lr: 0.01,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value:?}");
        match flag.as_str() {
            "--data" => a.data = value.clone(),
            "--hidden" => {
                a.hidden = value
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(bad)?
            }
            "--batch" => a.batch = value.parse().with_context(bad)?,
            "--threads" => a.threads = value.parse().with_context(bad)?,
            "--epochs" => a.epochs = value.parse().with_context(bad)?,
            "--seed" => a.seed = value.parse().with_context(bad)?,
            "--lr" => a.lr = value.parse().with_context(bad)?,
            _ => bail!("unknown argument {flag}"),
        }
    }
    if a.data.is_empty() {
        bail!("--data PATH is required");
    }
    if a.epochs < 2 {
        bail!("--epochs must be at least 2 (the first epoch is a warm-up)");
    }
    if a.batch == 0 || a.threads == 0 || a.hidden.contains(&0) {
        bail!("--batch, --threads and the --hidden widths must be positive");
    }
    Ok(a)
}

/// SplitMix64: small and seedable; bitwise equality with fastnn is not a goal.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            xs.swap(i, (self.next_u64() % (i as u64 + 1)) as usize);
        }
    }
}

/// The normalised training images [N, F] and labels [N].
pub struct Dataset {
    pub x: Vec<f32>,
    pub y: Vec<u32>,
    pub n: usize,
    pub f: usize,
}

pub fn load(path: &str) -> Result<Dataset> {
    let bytes = std::fs::read(path).context("cannot read the file")?;
    let st = SafeTensors::deserialize(&bytes).context("not a safetensors file")?;
    let get = |name: &str, dtype: Dtype| -> Result<_> {
        let t = st.tensor(name).map_err(|_| anyhow!("no tensor {name}"))?;
        if t.dtype() != dtype {
            bail!("tensor {name} is {:?}, expected {dtype:?}", t.dtype());
        }
        Ok(t)
    };
    let images = get("train.images", Dtype::U8)?;
    let labels = get("train.labels", Dtype::U8)?;
    let mean = get("stats.feature_mean", Dtype::F32)?;
    let std = get("stats.feature_std", Dtype::F32)?;
    let &[n, f] = images.shape() else {
        bail!(
            "train.images has shape {:?}, expected [N, F]",
            images.shape()
        );
    };
    if n == 0 || f == 0 {
        bail!("train.images is empty");
    }
    for (name, t, len) in [
        ("train.labels", &labels, n),
        ("stats.feature_mean", &mean, f),
        ("stats.feature_std", &std, f),
    ] {
        if t.shape() != [len] {
            bail!("{name} has shape {:?}, expected [{len}]", t.shape());
        }
    }
    let floats = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (mean, std) = (floats(mean.data()), floats(std.data()));
    // A constant feature (std 0) carries nothing: 0, as fastnn normalises it.
    let scale: Vec<f32> = std
        .iter()
        .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
        .collect();
    let x = images
        .data()
        .chunks_exact(f)
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&scale)
                .map(|((&p, &m), &s)| (p as f32 - m) * s)
        })
        .collect();
    let y: Vec<u32> = labels.data().iter().map(|&l| l as u32).collect();
    if let Some(l) = y.iter().find(|&&l| l >= 10) {
        bail!("train.labels holds {l}, expected a class below 10");
    }
    Ok(Dataset { x, y, n, f })
}

/// Median of the epochs after the first, which is a warm-up.
pub fn median_after_first(rates: &[f64]) -> f64 {
    let mut r = rates[1..].to_vec();
    r.sort_by(f64::total_cmp);
    let m = r.len() / 2;
    if r.len() % 2 == 1 {
        r[m]
    } else {
        (r[m - 1] + r[m]) / 2.0
    }
}

/// The epochs of a run: speed and mean loss, and the one-line JSON report.
#[derive(Default)]
pub struct Epochs {
    rates: Vec<f64>,
    losses: Vec<f64>,
}

impl Epochs {
    /// Records an epoch of `n` samples that took `secs` and summed `total_loss`.
    pub fn push(&mut self, n: usize, secs: f64, total_loss: f64) {
        let (rate, loss) = (n as f64 / secs, total_loss / n as f64);
        eprintln!(
            "epoch {}: {rate:.0} images/s, loss {loss:.4}",
            self.rates.len() + 1
        );
        self.rates.push(rate);
        self.losses.push(loss);
    }

    /// Prints the report on stdout (the same fields as the Python peers).
    pub fn report(&self, peer: &str, version: &str, backend: &str, args: &Args, n: usize) {
        let out = serde_json::json!({
            "peer": peer,
            "version": version,
            "backend": backend,
            "threads": args.threads,
            "batch": args.batch,
            "hidden": args.hidden,
            "samples": n,
            "epochs_images_per_sec": self.rates,
            "images_per_sec": median_after_first(&self.rates),
            "loss_first": self.losses[0],
            "loss_last": self.losses[self.losses.len() - 1],
        });
        println!("{out}");
    }
}

/// Runs `run`; on error prints `name: error` on stderr and exits with 1.
pub fn exit_on_error(name: &str, run: impl FnOnce() -> Result<()>) {
    if let Err(e) = run() {
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
}
