//! CSV tables: one label column and numeric feature columns.
//!
//! Both common layouts read: Kaggle's MNIST CSV with a `label,pixel1,…`
//! header, and header-less files. Features become f32; a cell that is not a
//! finite number is an error naming its line and column. Labels are either
//! small integers (classes `0`..`max`) or names (classes sorted by name).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use super::error::{DataError, Result};
use super::{Features, RawDataset, RawSplit};

/// Which column holds the label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelColumn {
    /// Zero-based column index.
    Index(usize),
    /// Column name from the header row.
    Name(String),
}

impl Default for LabelColumn {
    fn default() -> Self {
        LabelColumn::Index(0)
    }
}

impl std::str::FromStr for LabelColumn {
    type Err = std::convert::Infallible;
    /// A number is an index, anything else a column name.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.parse::<usize>() {
            Ok(i) => LabelColumn::Index(i),
            Err(_) => LabelColumn::Name(s.to_string()),
        })
    }
}

/// Whether the first row is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Header {
    /// A header when a feature cell of the first row is not a number.
    #[default]
    Auto,
    Yes,
    No,
}

/// Options of a CSV conversion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CsvOptions {
    pub label: LabelColumn,
    pub header: Header,
}

/// One table as read, before labels become class indices.
struct Table {
    features: Vec<f32>,
    labels: Vec<String>,
    dim: usize,
}

fn read_table(path: &Path, opts: &CsvOptions) -> Result<Table> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, "cannot read", e))?;
    table_from(path, file, opts)
}

/// Reads one table from `source`; `path` names it in messages.
fn table_from<R: Read>(path: &Path, source: R, opts: &CsvOptions) -> Result<Table> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(source);
    let mut records = reader.records();
    let Some(first) = records.next() else {
        return Err(DataError::new(path, "empty CSV file"));
    };
    let first = first.map_err(|e| csv_error(path, e))?;
    let width = first.len();
    let label_col = match &opts.label {
        LabelColumn::Index(i) if *i < width => *i,
        LabelColumn::Index(i) => {
            return Err(DataError::new(
                path,
                format!("label column {i} does not exist: the first row has {width} columns"),
            ))
        }
        LabelColumn::Name(name) => match first.iter().position(|c| c.trim() == name) {
            Some(i) if opts.header != Header::No => i,
            _ => {
                return Err(DataError::new(
                    path,
                    format!("no column named {name:?} in the header row"),
                ))
            }
        },
    };
    if width < 2 {
        return Err(DataError::new(
            path,
            "a CSV table needs a label column and at least one feature column",
        ));
    }
    let has_header = match (opts.header, &opts.label) {
        (Header::Yes, _) | (_, LabelColumn::Name(_)) => true,
        (Header::No, _) => false,
        (Header::Auto, _) => first
            .iter()
            .enumerate()
            .any(|(c, cell)| c != label_col && cell.trim().parse::<f32>().is_err()),
    };
    let names: Vec<String> = if has_header {
        first.iter().map(|s| s.trim().to_string()).collect()
    } else {
        (0..width).map(|c| format!("column {}", c + 1)).collect()
    };
    let mut table = Table {
        features: Vec::new(),
        labels: Vec::new(),
        dim: width - 1,
    };
    let mut add = |rec: &::csv::StringRecord| -> Result<()> {
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != width {
            return Err(DataError::new(
                path,
                format!(
                    "line {line}: {} columns, expected {width} as in the first row",
                    rec.len()
                ),
            ));
        }
        for (c, cell) in rec.iter().enumerate() {
            if c == label_col {
                table.labels.push(cell.trim().to_string());
                continue;
            }
            let value: f32 = cell.trim().parse().map_err(|_| {
                DataError::new(
                    path,
                    format!(
                        "line {line}, column {} ({}): {cell:?} is not a number",
                        c + 1,
                        names[c]
                    ),
                )
            })?;
            if !value.is_finite() {
                return Err(DataError::new(
                    path,
                    format!(
                        "line {line}, column {} ({}): {cell:?} is not a finite number",
                        c + 1,
                        names[c]
                    ),
                ));
            }
            table.features.push(value);
        }
        Ok(())
    };
    if !has_header {
        add(&first)?;
    }
    for record in records {
        add(&record.map_err(|e| csv_error(path, e))?)?;
    }
    Ok(table)
}

fn csv_error(path: &Path, e: ::csv::Error) -> DataError {
    let line = e
        .position()
        .map(|p| format!("line {}: ", p.line()))
        .unwrap_or_default();
    DataError::new(path, format!("{line}{e}"))
}

/// Reads `train` (and optionally `test`) CSV tables into a dataset.
pub fn read_csv(train: &Path, test: Option<&Path>, opts: &CsvOptions) -> Result<RawDataset> {
    let train_table = read_table(train, opts)?;
    let test_table = test
        .map(|p| read_table(p, opts).map(|t| (p, t)))
        .transpose()?;
    assemble(train, train_table, test_table)
}

/// [`read_csv`] on a training table already in memory (or any reader);
/// `name` stands for its path in messages.
pub fn read_csv_from<R: Read>(name: &Path, train: R, opts: &CsvOptions) -> Result<RawDataset> {
    let table = table_from(name, train, opts)?;
    assemble(name, table, None)
}

/// Labels to classes, and the dataset.
fn assemble(
    train: &Path,
    train_table: Table,
    test_table: Option<(&Path, Table)>,
) -> Result<RawDataset> {
    if let Some((p, t)) = &test_table {
        if t.dim != train_table.dim {
            return Err(DataError::new(
                p,
                format!(
                    "{} feature columns, the training table has {}",
                    t.dim, train_table.dim
                ),
            ));
        }
    }
    // Labels: small integers stay as they are; anything else is a class name.
    let all = train_table
        .labels
        .iter()
        .chain(test_table.iter().flat_map(|(_, t)| t.labels.iter()));
    let numeric: Option<Vec<u8>> = all.clone().map(|l| l.parse::<u8>().ok()).collect();
    let classes: Vec<String> = match &numeric {
        Some(values) => {
            let max = values.iter().copied().max().unwrap_or(0);
            (0..=max).map(|c| c.to_string()).collect()
        }
        None => train_table
            .labels
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    if classes.len() > 256 {
        return Err(DataError::new(
            train,
            format!(
                "{} distinct labels: at most 256 classes are supported",
                classes.len()
            ),
        ));
    }
    let index = |path: &Path, labels: &[String]| -> Result<Vec<u8>> {
        if numeric.is_some() {
            // Every label parsed as a u8 above.
            return Ok(labels
                .iter()
                .map(|l| l.parse::<u8>().unwrap_or(0))
                .collect());
        }
        labels
            .iter()
            .map(|l| {
                classes
                    .iter()
                    .position(|c| c == l)
                    .map(|i| i as u8)
                    .ok_or_else(|| {
                        DataError::new(
                            path,
                            format!("label {l:?} does not occur in the training table"),
                        )
                    })
            })
            .collect()
    };
    let mut splits = vec![RawSplit {
        name: "train".to_string(),
        labels: index(train, &train_table.labels)?,
        features: Features::F32(train_table.features),
        coarse_labels: None,
    }];
    if let Some((p, t)) = test_table {
        splits.push(RawSplit {
            name: "test".to_string(),
            labels: index(p, &t.labels)?,
            features: Features::F32(t.features),
            coarse_labels: None,
        });
    }
    Ok(RawDataset {
        format: "csv".to_string(),
        classes,
        coarse_classes: None,
        shape: vec![train_table.dim],
        splits,
    })
}
