//! Pictures of a run: training curves and confusion matrices.
//!
//! Pure drawing functions: they take the numbers and write a PNG or SVG
//! file (chosen by the extension), atomically: a temporary file beside the
//! output, renamed once complete. Text uses the vendored DejaVu Sans
//! (`assets/fonts/`), so no system font library is linked or needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};
use serde::Deserialize;

use crate::train::EpochMetrics;

const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Errors of the drawing functions.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {problem}")]
    Input { path: String, problem: String },
    #[error("{path}: cannot write the picture: {problem}")]
    Draw { path: String, problem: String },
}

/// One epoch of a metrics file: the fields the curves need.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    #[serde(default)]
    pub val_loss: Option<f64>,
    #[serde(default)]
    pub val_accuracy: Option<f64>,
}

impl From<&EpochMetrics> for EpochPoint {
    fn from(m: &EpochMetrics) -> EpochPoint {
        EpochPoint {
            epoch: m.epoch,
            train_loss: m.train_loss,
            train_accuracy: m.train_accuracy,
            val_loss: m.val_loss,
            val_accuracy: m.val_accuracy,
        }
    }
}

/// What a metrics file's `{"run": {...}}` line says about the run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct RunLine {
    #[serde(default)]
    pub dims: Vec<usize>,
    #[serde(default)]
    pub activation: Option<String>,
    #[serde(default)]
    pub dataset: Option<String>,
}

impl RunLine {
    /// "784-512-256-10 relu on fashion-mnist.safetensors".
    pub fn title(&self) -> String {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        let mut t = if dims.is_empty() {
            "MLP".to_string()
        } else {
            format!("MLP {}", dims.join("-"))
        };
        if let Some(a) = &self.activation {
            t += &format!(" {a}");
        }
        if let Some(d) = &self.dataset {
            t += &format!(" on {d}");
        }
        t
    }
}

/// A metrics file (`fastnn train --metrics`) parsed: the last run line
/// and the epochs, in epoch order. When a file holds a resumed run, an
/// epoch written twice keeps its last line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub run: Option<RunLine>,
    pub epochs: Vec<EpochPoint>,
}

/// Parses the JSON-lines text of a metrics file. Blank lines are skipped;
/// `{"run": …}` lines describe the run; every other line is an epoch.
pub fn parse_metrics(text: &str) -> Result<Metrics, String> {
    let mut m = Metrics::default();
    let mut by_epoch = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", i + 1))?;
        if let Some(run) = v.get("run") {
            m.run = Some(
                RunLine::deserialize(run)
                    .map_err(|e| format!("line {}: malformed run line: {e}", i + 1))?,
            );
            continue;
        }
        let p = EpochPoint::deserialize(&v)
            .map_err(|e| format!("line {}: not an epoch's metrics: {e}", i + 1))?;
        by_epoch.insert(p.epoch, p);
    }
    m.epochs = by_epoch.into_values().collect();
    Ok(m)
}

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if register_font(FAMILY, FontStyle::Normal, FONT).is_err() {
            panic!("the vendored font is not a valid TrueType font");
        }
    });
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.display().to_string(),
        problem: e.to_string(),
    }
}

/// The output format, from the file extension.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Png,
    Svg,
}

fn format_of(path: &Path) -> Result<Format, PlotError> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => Ok(Format::Png),
        Some("svg") => Ok(Format::Svg),
        _ => Err(PlotError::Input {
            path: path.display().to_string(),
            problem: "the picture's name must end in .png or .svg".into(),
        }),
    }
}

/// Runs `$draw(&root)` on a PNG or SVG drawing area (by `$path`'s
/// extension) that writes a temporary file beside `$path`, then renames
/// the finished file into place.
macro_rules! render {
    ($path:expr, $size:expr, $draw:expr) => {{
        let path: &Path = $path;
        register();
        let format = format_of(path)?;
        let suffix = if format == Format::Png {
            ".png"
        } else {
            ".svg"
        };
        let tmp = crate::atomic::temp_beside(path, ".fastnn-plot-", suffix)
            .map_err(|e| draw_err(path, e))?;
        match format {
            Format::Png => {
                let root = BitMapBackend::new(tmp.path(), $size).into_drawing_area();
                $draw(&root).map_err(|e| draw_err(path, e))?;
                root.present().map_err(|e| draw_err(path, e))?;
            }
            Format::Svg => {
                let root = SVGBackend::new(tmp.path(), $size).into_drawing_area();
                $draw(&root).map_err(|e| draw_err(path, e))?;
                root.present().map_err(|e| draw_err(path, e))?;
            }
        }
        tmp.persist(path).map_err(|e| draw_err(path, e.error))?;
        Ok(())
    }};
}

type DrawResult = Result<(), String>;

fn e2s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);

/// Writes loss and accuracy curves (train and validation per epoch, two
/// panels side by side) to `path` (.png or .svg).
pub fn curves(path: &Path, title: &str, epochs: &[EpochPoint]) -> Result<(), PlotError> {
    if epochs.is_empty() {
        return Err(PlotError::Input {
            path: path.display().to_string(),
            problem: "no epochs to plot".into(),
        });
    }
    render!(path, (1200, 500), |root: &DrawingArea<_, Shift>| {
        draw_curves(root, title, epochs)
    })
}

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    epochs: &[EpochPoint],
) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let root = root.titled(title, (FAMILY, 26).into_font()).map_err(e2s)?;
    let panels = root.split_evenly((1, 2));
    let finite = |v: f64| v.is_finite().then_some(v);
    let series = |f: &dyn Fn(&EpochPoint) -> Option<f64>| -> Vec<(f64, f64)> {
        epochs
            .iter()
            .filter_map(|p| f(p).and_then(finite).map(|v| (p.epoch as f64, v)))
            .collect()
    };
    let loss = [
        ("train", series(&|p| Some(p.train_loss))),
        ("validation", series(&|p| p.val_loss)),
    ];
    let acc = [
        ("train", series(&|p| Some(100.0 * p.train_accuracy))),
        ("validation", series(&|p| p.val_accuracy.map(|a| 100.0 * a))),
    ];
    let last = epochs.iter().map(|p| p.epoch).max().unwrap_or(1).max(2) as f64;
    let first = epochs
        .iter()
        .map(|p| p.epoch)
        .min()
        .unwrap_or(1)
        .min(last as usize - 1) as f64;
    let range = |sets: &[(&str, Vec<(f64, f64)>)], floor: Option<f64>, ceil: Option<f64>| {
        let vals = sets.iter().flat_map(|(_, s)| s.iter().map(|p| p.1));
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
        let mut lo = lo - pad;
        let mut hi = hi + pad;
        if let Some(f) = floor {
            lo = lo.max(f);
        }
        if let Some(c) = ceil {
            hi = hi.min(c);
        }
        lo..hi
    };
    let loss_range = range(&loss, Some(0.0), None);
    let acc_range = range(&acc, Some(0.0), Some(100.0));
    panel(
        &panels[0],
        "loss",
        "loss",
        first..last,
        loss_range,
        &loss,
        SeriesLabelPosition::UpperRight,
    )?;
    panel(
        &panels[1],
        "accuracy",
        "accuracy (%)",
        first..last,
        acc_range,
        &acc,
        SeriesLabelPosition::LowerRight,
    )?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    y_desc: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    sets: &[(&str, Vec<(f64, f64)>); 2],
    legend: SeriesLabelPosition,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x.clone(), y)
        .map_err(e2s)?;
    let epochs = (x.end - x.start).round() as usize + 1;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(epochs.min(12))
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .y_labels(8)
        .axis_desc_style((FAMILY, 16))
        .label_style((FAMILY, 14))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(e2s)?;
    for ((name, points), color) in sets.iter().zip([TRAIN, VAL]) {
        if points.is_empty() {
            continue;
        }
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))
            .map_err(e2s)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        if points.len() <= 40 {
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(e2s)?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(e2s)?;
    Ok(())
}

/// Shortens a class name to at most `max` characters, ending in "…".
fn abbreviate(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let mut s: String = name.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Writes a confusion-matrix picture to `path` (.png or .svg): rows are
/// the true classes, columns the predicted ones, cells shaded by count
/// with the count written in them. `confusion[true · C + predicted]`.
pub fn confusion(
    path: &Path,
    title: &str,
    classes: &[String],
    confusion: &[usize],
) -> Result<(), PlotError> {
    let c = classes.len();
    if c == 0 || confusion.len() != c * c {
        return Err(PlotError::Input {
            path: path.display().to_string(),
            problem: format!(
                "a confusion matrix of {} counts does not fit {c} classes",
                confusion.len()
            ),
        });
    }
    let names: Vec<String> = classes.iter().map(|n| abbreviate(n, 16)).collect();
    let cell = (640 / c as u32).clamp(14, 64);
    let label_px = 8 * names.iter().map(|n| n.chars().count()).max().unwrap_or(1) as u32 + 16;
    let left = 40 + label_px;
    let top = 60;
    let bottom = 40 + label_px;
    let size = (
        (left + cell * c as u32 + 30).max(420),
        top + cell * c as u32 + bottom,
    );
    let layout = Grid {
        left: left as i32,
        top: top as i32,
        cell: cell as i32,
        label_px: label_px as i32,
    };
    render!(path, size, |root: &DrawingArea<_, Shift>| draw_confusion(
        root, title, &names, confusion, layout
    ))
}

#[derive(Clone, Copy)]
struct Grid {
    left: i32,
    top: i32,
    cell: i32,
    label_px: i32,
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    names: &[String],
    confusion: &[usize],
    g: Grid,
) -> DrawResult {
    root.fill(&WHITE).map_err(e2s)?;
    let (w, _) = root.dim_in_pixel();
    let c = names.len();
    let max = confusion.iter().copied().max().unwrap_or(0).max(1) as f64;
    let centre = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(
        title.to_string(),
        (w as i32 / 2, 24),
        (FAMILY, 20).into_font().color(&BLACK).pos(centre),
    ))
    .map_err(e2s)?;
    let digits = confusion
        .iter()
        .map(|n| n.to_string().len())
        .max()
        .unwrap_or(1) as f64;
    let number_size = (g.cell as f64 * 0.4).min(g.cell as f64 * 0.85 / (0.62 * digits));
    let label_size = (g.cell as f64 * 0.6).clamp(9.0, 15.0);
    for t in 0..c {
        for p in 0..c {
            let n = confusion[t * c + p];
            let shade = n as f64 / max;
            let color = RGBColor(
                (247.0 - shade * (247.0 - 8.0)) as u8,
                (251.0 - shade * (251.0 - 48.0)) as u8,
                (255.0 - shade * (255.0 - 107.0)) as u8,
            );
            let x0 = g.left + p as i32 * g.cell;
            let y0 = g.top + t as i32 * g.cell;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + g.cell, y0 + g.cell)],
                color.filled(),
            ))
            .map_err(e2s)?;
            if number_size >= 7.0 {
                let ink = if shade > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    n.to_string(),
                    (x0 + g.cell / 2, y0 + g.cell / 2),
                    (FAMILY, number_size).into_font().color(&ink).pos(centre),
                ))
                .map_err(e2s)?;
            }
        }
    }
    let side = g.cell * c as i32;
    root.draw(&Rectangle::new(
        [(g.left, g.top), (g.left + side, g.top + side)],
        BLACK.mix(0.5),
    ))
    .map_err(e2s)?;
    for (k, name) in names.iter().enumerate() {
        let mid = k as i32 * g.cell + g.cell / 2;
        root.draw(&Text::new(
            name.clone(),
            (g.left - 8, g.top + mid),
            (FAMILY, label_size)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(e2s)?;
        root.draw(&Text::new(
            name.clone(),
            (g.left + mid, g.top + side + 8),
            (FAMILY, label_size)
                .into_font()
                .transform(FontTransform::Rotate270)
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(e2s)?;
    }
    let axis = (FAMILY, 16).into_font().color(&BLACK).pos(centre);
    root.draw(&Text::new(
        "predicted class",
        (g.left + side / 2, g.top + side + g.label_px + 22),
        axis.clone(),
    ))
    .map_err(e2s)?;
    root.draw(&Text::new(
        "true class",
        (16, g.top + side / 2),
        axis.transform(FontTransform::Rotate270),
    ))
    .map_err(e2s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_skip_the_run_line_and_keep_the_last_of_each_epoch() {
        let text = r#"{"run":{"dims":[4,3,2],"activation":"relu","dataset":"d.safetensors"}}
{"epoch":1,"train_loss":1.0,"train_accuracy":0.5,"val_loss":null,"val_accuracy":null,"lr":0.1,"images_per_sec":1.0,"seconds":1.0}

{"epoch":2,"train_loss":0.5,"train_accuracy":0.7,"val_loss":0.6,"val_accuracy":0.6,"lr":0.1,"images_per_sec":1.0,"seconds":1.0}
{"epoch":2,"train_loss":0.4,"train_accuracy":0.8,"val_loss":0.6,"val_accuracy":0.6,"lr":0.1,"images_per_sec":1.0,"seconds":1.0}
"#;
        let m = parse_metrics(text).unwrap();
        assert_eq!(m.run.unwrap().title(), "MLP 4-3-2 relu on d.safetensors");
        assert_eq!(m.epochs.len(), 2);
        assert_eq!(m.epochs[1].train_loss, 0.4);
        assert_eq!(m.epochs[0].val_loss, None);
        assert!(parse_metrics("{\"epoch\": 1}")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_metrics("nope").is_err());
    }

    #[test]
    fn abbreviates_long_names() {
        assert_eq!(abbreviate("cat", 5), "cat");
        assert_eq!(abbreviate("aquarium_fish", 6), "aquar…");
    }

    #[test]
    fn pictures_need_a_known_extension_and_matching_counts() {
        let dir = tempfile::tempdir().unwrap();
        let bad = confusion(&dir.path().join("c.jpg"), "t", &["a".into()], &[1]);
        assert!(bad.unwrap_err().to_string().contains(".png or .svg"));
        let bad = confusion(&dir.path().join("c.png"), "t", &["a".into()], &[1, 2]);
        assert!(bad.is_err());
        assert!(curves(&dir.path().join("c.png"), "t", &[]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
