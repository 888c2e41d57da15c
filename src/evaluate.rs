//! `wbia-lightglue evaluate`: 1-vs-all CMC and mAP over a labelled image folder (CSV) or over
//! annotations fetched from WBIA by UUID.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use wbia_lightglue_engine::evaluate::{evaluate, Evaluation};
use wbia_lightglue_model::{decode_image, load_image, Features, RgbImage};

use crate::{MatcherArgs, ModelArgs};

#[derive(Args)]
pub struct EvaluateArgs {
    /// CSV with a header row and columns `path` (relative to the CSV's folder) and `identity`.
    #[arg(long, conflicts_with = "uuids")]
    csv: Option<PathBuf>,
    /// Compare each query only with images sharing this column's value (e.g. side, viewpoint).
    #[arg(long)]
    group_column: Option<String>,
    /// File with one annotation UUID per line, fetched from `--wbia-url`; identities are the
    /// WBIA names (unnamed annotations are left out).
    #[arg(long, requires = "wbia_url")]
    uuids: Option<PathBuf>,
    #[arg(long, env = "WBIA_URL")]
    wbia_url: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    matcher: MatcherArgs,
}

struct Item {
    label: String,
    identity: String,
    group: Option<String>,
    image: RgbImage,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Reads a simple CSV (no quoted fields).
fn read_csv(path: &Path, group_column: Option<&str>) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .context("empty CSV")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (p, id) = match (col("path"), col("identity")) {
        (Some(p), Some(i)) => (p, i),
        _ => bail!(
            "{}: the header needs `path` and `identity` columns, got {header:?}",
            path.display()
        ),
    };
    let group = match group_column {
        Some(g) => Some(col(g).with_context(|| format!("no column {g:?} in {header:?}"))?),
        None => None,
    };
    let root = path.parent().unwrap_or(Path::new("."));
    let rows: Vec<&str> = lines.collect();
    let progress = bar(rows.len(), "load");
    let mut items = Vec::with_capacity(rows.len());
    for (n, line) in rows.iter().enumerate() {
        if line.contains('"') {
            bail!(
                "{} line {}: quoted fields are not supported",
                path.display(),
                n + 2
            );
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| -> Result<String> {
            fields.get(i).map(|s| s.to_string()).with_context(|| {
                format!(
                    "{} line {}: missing column {}",
                    path.display(),
                    n + 2,
                    header[i]
                )
            })
        };
        let rel = field(p)?;
        let image = load_image(root.join(&rel)).with_context(|| format!("image {rel}"))?;
        items.push(Item {
            label: rel,
            identity: field(id)?,
            group: group.map(&field).transpose()?,
            image,
        });
        progress.inc(1);
    }
    progress.finish();
    Ok(items)
}

fn read_wbia(uuids: &Path, url: &str) -> Result<Vec<Item>> {
    let text =
        std::fs::read_to_string(uuids).with_context(|| format!("reading {}", uuids.display()))?;
    let list: Vec<uuid::Uuid> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| uuid::Uuid::parse_str(l).with_context(|| format!("not a UUID: {l}")))
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = wbia_client::WbiaClient::new(url, Default::default())?;
        let names = client.annot_names(&list).await?;
        let progress = bar(list.len(), "fetch");
        let mut items = Vec::new();
        for (uuid, name) in list.iter().zip(names) {
            progress.inc(1);
            let Some(identity) = name else { continue };
            let bytes = client.chip(*uuid).await?;
            let image = decode_image(&bytes).with_context(|| format!("chip of {uuid}"))?;
            items.push(Item {
                label: uuid.to_string(),
                identity,
                group: None,
                image,
            });
        }
        progress.finish();
        Ok(items)
    })
}

pub fn run(args: &EvaluateArgs) -> Result<()> {
    let items = match (&args.csv, &args.uuids, &args.wbia_url) {
        (Some(csv), _, _) => read_csv(csv, args.group_column.as_deref())?,
        (None, Some(uuids), Some(url)) => read_wbia(uuids, url)?,
        _ => bail!("give --csv FILE, or --uuids FILE with --wbia-url URL"),
    };
    if items.len() < 2 {
        bail!("need at least two labelled images, got {}", items.len());
    }
    let device = args.model.runtime.open()?;
    let extractor = args.model.load_aliked(&device)?;
    let matcher = args.model.load_lightglue(args.matcher.config(), &device)?;

    let progress = bar(items.len(), "extract");
    let mut features: Vec<Features> = Vec::with_capacity(items.len());
    for item in &items {
        features.push(
            extractor
                .extract(&item.image)
                .with_context(|| item.label.clone())?,
        );
        progress.inc(1);
    }
    progress.finish();

    // One match per unordered pair (swapping the images moves the score by < 4e-6 relative).
    let n = items.len();
    let comparable = |i: usize, j: usize| items[i].group == items[j].group;
    let pairs: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .filter(|&(i, j)| comparable(i, j))
        .collect();
    let progress = bar(pairs.len(), "match");
    let mut scores = vec![vec![0f32; n]; n];
    for &(i, j) in &pairs {
        let s = matcher.match_pair(&features[i], &features[j])?.score();
        scores[i][j] = s;
        scores[j][i] = s;
        progress.inc(1);
    }
    progress.finish();

    let identities: Vec<String> = items.iter().map(|i| i.identity.clone()).collect();
    let groups: Option<Vec<String>> = args.group_column.as_ref().map(|_| {
        items
            .iter()
            .map(|i| i.group.clone().unwrap_or_default())
            .collect()
    });
    let result = evaluate(&scores, &identities, groups.as_deref());
    print(&result, args.json)
}

fn print(e: &Evaluation, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
        return Ok(());
    }
    println!(
        "queries: {} ({} with a same-identity candidate)",
        e.queries, e.queries_with_match
    );
    for (rank, value) in &e.cmc {
        println!("CMC@{rank:<2} {:.4}", value);
    }
    println!("mAP    {:.4}", e.mean_average_precision);
    Ok(())
}
