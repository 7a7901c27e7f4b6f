//! Figure 4 as a PNG line plot (plotters' bitmap backend): mean `H_i`
//! against `i` for the four (level, group) columns.
//!
//! Text needs a font file: with `--font` (any TrueType / OpenType file,
//! read through `ab_glyph`), the plot gets a title, axis labels, tick
//! values and a legend; without one it is drawn without any text (plotters
//! then needs no system fonts), on a fixed 0..1 y axis with grid lines
//! every 0.1, and [`legend_markdown`] (written to `figure4.md`) says
//! which line is which.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use damro::outlier::image::RgbImage;
use damro_eval::analysis::{AnalysisSummary, Group, Level};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const WIDTH: u32 = 800;
const HEIGHT: u32 = 520;
/// The family name the `--font` file is registered under.
const FAMILY: &str = "analysis-font";

/// How one column is drawn.
struct Look {
    level: Level,
    group: Group,
    color: RGBColor,
    /// Sentence level: thick line, filled circles; object level: thin
    /// line, hollow squares.
    sentence: bool,
}

const HA: RGBColor = RGBColor(214, 39, 40);
const NON_HA: RGBColor = RGBColor(31, 119, 180);

fn looks() -> [Look; 4] {
    let look = |level, group, color| Look {
        level,
        group,
        color,
        sentence: level == Level::Sentence,
    };
    [
        look(Level::Sentence, Group::Hallucinatory, HA),
        look(Level::Sentence, Group::NonHallucinatory, NON_HA),
        look(Level::Object, Group::Hallucinatory, HA),
        look(Level::Object, Group::NonHallucinatory, NON_HA),
    ]
}

fn name(look: &Look) -> String {
    let group = match look.group {
        Group::Hallucinatory => "hallucinatory",
        Group::NonHallucinatory => "non-hallucinatory",
    };
    format!("{} level, {group}", look.level.as_str())
}

/// Which line of the PNG is which, as a Markdown list.
pub fn legend_markdown() -> String {
    let mut text = String::new();
    for look in looks() {
        let color = if look.group == Group::Hallucinatory {
            "red"
        } else {
            "blue"
        };
        let marks = if look.sentence {
            "thick line, filled circles"
        } else {
            "thin line, hollow squares"
        };
        text.push_str(&format!("- {color}, {marks}: {}\n", name(&look)));
    }
    text.push_str(
        "- x: i = 1, 2, ... left to right (one vertical grid line per i); y: mean H_i from 0 \
         (bottom axis) to 1 (top), grid lines every 0.1\n",
    );
    text
}

/// Registers the `--font` file for the plot's text.
fn load_font(path: &Path) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading --font `{}`", path.display()))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        anyhow!(
            "--font `{}` is not a TrueType or OpenType font",
            path.display()
        )
    })
}

/// Draws Figure 4 of `summary` to `path` (PNG, written atomically).
pub fn figure4_png(summary: &AnalysisSummary, font: Option<&Path>, path: &Path) -> Result<()> {
    if let Some(font) = font {
        load_font(font)?;
    }
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    draw(summary, font.is_some(), &mut pixels).map_err(|e| anyhow!("drawing Figure 4: {e}"))?;
    let image = RgbImage::from_raw(WIDTH, HEIGHT, pixels)
        .ok_or_else(|| anyhow!("the plot buffer does not match {WIDTH}x{HEIGHT}"))?;
    damro::outlier::save_png_atomic(&image, path)
        .with_context(|| format!("writing `{}`", path.display()))
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn draw(summary: &AnalysisSummary, labelled: bool, pixels: &mut [u8]) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = summary.max_i.max(1);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(24);
    if labelled {
        builder
            .caption(
                "Figure 4: mean H_i of hallucinatory and other tokens",
                (FAMILY, 22),
            )
            .x_label_area_size(44)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(0.5..n as f64 + 0.5, 0.0..1.0)?;
    if labelled {
        draw_labelled_mesh(&mut chart, n)?;
    } else {
        draw_bare_mesh(&mut chart, n)?;
    }
    for look in looks() {
        draw_column(&mut chart, summary, &look, labelled)?;
    }
    if labelled {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 15))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// Axes with tick values and titles (needs the font).
fn draw_labelled_mesh(chart: &mut Chart<'_, '_>, n: usize) -> DrawResult {
    chart
        .configure_mesh()
        .x_labels(n)
        .y_labels(11)
        .x_desc("i")
        .y_desc("mean H_i")
        .x_label_formatter(&|x| format!("{}", x.round()))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    Ok(())
}

/// Grid lines at every i and every 0.1, and the two axes; no text.
fn draw_bare_mesh(chart: &mut Chart<'_, '_>, n: usize) -> DrawResult {
    let grey = RGBColor(220, 220, 220);
    let (left, right) = (0.5, n as f64 + 0.5);
    for tenth in 0..=10 {
        let y = f64::from(tenth) / 10.0;
        chart.draw_series(std::iter::once(PathElement::new(
            [(left, y), (right, y)],
            grey,
        )))?;
    }
    for i in 1..=n {
        let x = i as f64;
        chart.draw_series(std::iter::once(PathElement::new(
            [(x, 0.0), (x, 1.0)],
            grey,
        )))?;
    }
    let axes = [(left, 1.0), (left, 0.0), (right, 0.0)];
    chart.draw_series(std::iter::once(PathElement::new(
        axes,
        BLACK.stroke_width(2),
    )))?;
    Ok(())
}

/// One (level, group) column: its line and markers (and legend entry).
fn draw_column(
    chart: &mut Chart<'_, '_>,
    summary: &AnalysisSummary,
    look: &Look,
    labelled: bool,
) -> DrawResult {
    let points: Vec<(f64, f64)> = summary
        .level(look.level)
        .group(look.group)
        .mean_h
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| ((i + 1) as f64, v)))
        .collect();
    let width = if look.sentence { 3 } else { 1 };
    let color = look.color;
    let series = chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(width)))?;
    if labelled {
        series.label(name(look)).legend(move |(x, y)| {
            PathElement::new([(x, y), (x + 20, y)], color.stroke_width(width))
        });
    }
    if look.sentence {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
    } else {
        let style = color.stroke_width(2);
        chart.draw_series(
            points
                .iter()
                .map(|&p| EmptyElement::at(p) + Rectangle::new([(-5, -5), (5, 5)], style)),
        )?;
    }
    Ok(())
}
