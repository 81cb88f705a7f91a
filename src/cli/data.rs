//! `fastnn data`: convert, info, fetch.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use fastnn::data::cifar::Cifar100Labels;
use fastnn::data::convert::{convert, ConvertOptions, ConvertReport, SourceFormat};
use fastnn::data::csv::{CsvOptions, Header, LabelColumn};
use fastnn::data::fetch::{self, REMOTES};
use fastnn::data::{Dataset, FeatureView};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Convert a CIFAR tarball, an IDX folder or a CSV table into a dataset file.
    #[command(after_help = "Examples:
  fastnn data convert cifar-10-binary.tar.gz -o cifar10.safetensors
  fastnn data convert cifar-100-python.tar.gz -o cifar100.safetensors --labels coarse
  fastnn data convert fashion-mnist/ -o fashion.safetensors
  fastnn data convert train.csv --test test.csv --label species -o iris.safetensors")]
    Convert(ConvertArgs),
    /// Show what a dataset file holds (the embedded default when no file is given).
    #[command(after_help = "Examples:
  fastnn data info cifar10.safetensors
  fastnn data info            # the embedded Fashion-MNIST, converted into ~/.cache/fastnn on first use")]
    Info(InfoArgs),
    /// Download an official dataset, verify its checksum and convert it.
    #[command(after_help = "Examples:
  fastnn data fetch cifar10
  fastnn data fetch fashion-mnist -o fashion.safetensors
  fastnn data fetch cifar10 --url https://mirror.example/cifar-10-binary.tar.gz --md5 <hex>")]
    Fetch(FetchArgs),
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The source: a CIFAR tarball, a folder of IDX files, or a .csv file.
    input: PathBuf,
    /// The dataset file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Source format (auto: decided from the input).
    #[arg(long, default_value = "auto")]
    format: SourceFormat,
    /// CIFAR-100: the label set stored as `labels` (the other is kept too).
    #[arg(long, default_value = "fine", value_parser = parse_cifar100_labels)]
    labels: Cifar100Labels,
    /// CSV: the label column, by name or zero-based index.
    #[arg(long, default_value = "0")]
    label: LabelColumn,
    /// CSV: whether the first row is a header (auto: when its cells are not numbers).
    #[arg(long, default_value = "auto", value_parser = parse_header)]
    header: Header,
    /// CSV: a second table to store as the test split.
    #[arg(long)]
    test: Option<PathBuf>,
    /// Class names, comma-separated, replacing the source's.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    /// The dataset file (default: the embedded Fashion-MNIST).
    file: Option<PathBuf>,
}

#[derive(Args)]
pub struct FetchArgs {
    /// cifar10, cifar100, mnist or fashion-mnist.
    name: String,
    /// The dataset file to write (default: NAME.safetensors).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Download from here instead: the archive's URL (CIFAR) or the folder
    /// URL holding the four IDX files (MNIST, Fashion-MNIST).
    #[arg(long)]
    url: Option<String>,
    /// Expected md5 of the archive, for a mirror serving a different file (CIFAR only).
    #[arg(long)]
    md5: Option<String>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
}

fn parse_cifar100_labels(s: &str) -> Result<Cifar100Labels, String> {
    match s {
        "fine" => Ok(Cifar100Labels::Fine),
        "coarse" => Ok(Cifar100Labels::Coarse),
        _ => Err(format!("{s:?}: expected fine or coarse")),
    }
}

fn parse_header(s: &str) -> Result<Header, String> {
    match s {
        "auto" => Ok(Header::Auto),
        "yes" => Ok(Header::Yes),
        "no" => Ok(Header::No),
        _ => Err(format!("{s:?}: expected auto, yes or no")),
    }
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Convert(args) => run_convert(args),
        DataCommand::Info(args) => run_info(args),
        DataCommand::Fetch(args) => run_fetch(args),
    }
}

fn run_convert(args: ConvertArgs) -> Result<()> {
    let opts = ConvertOptions {
        format: args.format,
        cifar100_labels: args.labels,
        csv: CsvOptions {
            label: args.label,
            header: args.header,
        },
        csv_test: args.test,
        classes: args.classes,
        overwrite: args.force,
    };
    let report = convert(&args.input, &args.output, &opts)?;
    print_report(&args.output, &report)
}

fn print_report(out: &Path, report: &ConvertReport) -> Result<()> {
    let splits: Vec<String> = report
        .splits
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "wrote {} ({:?}: {}) in {:.2} s",
        out.display(),
        report.format,
        splits.join(", "),
        report.seconds
    )?;
    Ok(())
}

fn run_info(args: InfoArgs) -> Result<()> {
    let ds = super::open_data(args.file.as_deref())?;
    let mut out = std::io::stdout().lock();
    write_info(&mut out, &ds)?;
    Ok(())
}

fn write_info(out: &mut impl Write, ds: &Dataset) -> Result<()> {
    let meta = ds.metadata();
    let size = std::fs::metadata(ds.path()).map(|m| m.len()).unwrap_or(0);
    writeln!(
        out,
        "file:     {} ({:.1} MB)",
        ds.path().display(),
        size as f64 / 1e6
    )?;
    let md5s: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(meta.get("source_md5").map_or("{}", String::as_str))
            .unwrap_or_default();
    writeln!(
        out,
        "source:   {} ({})",
        meta.get("source").map_or("?", String::as_str),
        meta.get("source_format").map_or("?", String::as_str)
    )?;
    for (name, md5) in &md5s {
        writeln!(out, "          {name}  md5 {}", md5.as_str().unwrap_or("?"))?;
    }
    let shape: Vec<String> = ds.sample_shape().iter().map(|x| x.to_string()).collect();
    let dtype = match ds.split("train")?.features() {
        FeatureView::U8(_) => "u8",
        FeatureView::F32(_) => "f32",
    };
    writeln!(
        out,
        "sample:   {} = {} {dtype} features",
        shape.join("×"),
        ds.dim()
    )?;
    let classes = ds.classes();
    writeln!(out, "classes:  {}: {}", classes.len(), classes.join(", "))?;
    if let Some(coarse) = ds.coarse_classes() {
        writeln!(out, "coarse:   {}: {}", coarse.len(), coarse.join(", "))?;
    }
    for name in ds.split_names() {
        let split = ds.split(name)?;
        writeln!(out, "split {name}: {} samples", split.len())?;
        let mut counts = vec![0usize; classes.len()];
        split.labels().iter().for_each(|&l| counts[l as usize] += 1);
        if classes.len() <= 20 {
            let hist: Vec<String> = counts
                .iter()
                .enumerate()
                .map(|(c, n)| format!("{}={n}", classes[c]))
                .collect();
            writeln!(out, "  per class: {}", hist.join(" "))?;
        } else {
            let (lo, hi) = (
                counts.iter().min().unwrap_or(&0),
                counts.iter().max().unwrap_or(&0),
            );
            writeln!(out, "  per class: {lo} to {hi} samples")?;
        }
    }
    let stats = ds.stats();
    let fmt = |v: &[f32]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out, "normalisation (training split, stored units):")?;
    writeln!(
        out,
        "  channel mean [{}]  std [{}]",
        fmt(&stats.channel_mean),
        fmt(&stats.channel_std)
    )?;
    let range = |v: &[f32]| {
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        format!("{lo:.3} .. {hi:.3}")
    };
    writeln!(
        out,
        "  feature mean {}  std {}",
        range(&stats.feature_mean),
        range(&stats.feature_std)
    )?;
    Ok(())
}

fn run_fetch(args: FetchArgs) -> Result<()> {
    let Some(remote) = fetch::remote(&args.name) else {
        let names: Vec<&str> = REMOTES.iter().map(|r| r.name).collect();
        bail!(
            "unknown dataset {:?}: fetch knows {}",
            args.name,
            names.join(", ")
        );
    };
    let out = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.safetensors", remote.name)));
    if !args.force && out.exists() {
        bail!(
            "{}: already exists (use --force to overwrite it)",
            out.display()
        );
    }
    if args.md5.is_some() && remote.files.len() != 1 {
        bail!("--md5 applies to single-archive datasets (cifar10, cifar100)");
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".fastnn-fetch-")
        .tempdir_in(&parent)
        .with_context(|| format!("{}: cannot create a temporary folder", parent.display()))?;
    let bar = download_bar();
    let source = fetch::fetch_files(
        remote,
        args.url.as_deref(),
        args.md5.as_deref(),
        tmp.path(),
        &mut |name, done, total| {
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.set_message(name.to_string());
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    let opts = ConvertOptions {
        classes: (remote.name == "fashion-mnist").then(|| {
            fastnn::data::idx::FASHION_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        }),
        overwrite: args.force,
        ..ConvertOptions::default()
    };
    let report = convert(&source, &out, &opts)?;
    print_report(&out, &report)
}

fn download_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}
