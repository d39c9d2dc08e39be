//! SVG charts: messages and replicas over one time axis, for `plan` and
//! `watch`.

use plotters::prelude::*;

use crate::plan::Plan;

/// One named line.
pub struct Series {
    /// The legend label.
    pub label: String,
    /// (seconds, value) points.
    pub points: Vec<(f64, f64)>,
}

fn err(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

/// A labelled moment, drawn as a vertical dashed line.
pub struct Mark {
    /// The legend label.
    pub label: String,
    /// Seconds.
    pub t: f64,
}

/// One chart of a figure: series on the left axis (`left_label`) and,
/// when there are any, whole-number series on the right (replicas).
pub struct Panel<'a> {
    /// The panel's caption.
    pub caption: &'a str,
    /// What the left axis measures.
    pub left_label: &'a str,
    /// Lines on the left axis.
    pub left: &'a [Series],
    /// Lines on the right axis (replicas: whole numbers).
    pub replicas: &'a [Series],
    /// Vertical dashed lines.
    pub marks: &'a [Mark],
}

/// Draws message series on the left axis and replica series on the right
/// (whole replicas: the axis ticks are integers), against seconds, with
/// `marks` as vertical lines.
pub fn svg(
    title: &str,
    messages: &[Series],
    replicas: &[Series],
    marks: &[Mark],
) -> anyhow::Result<String> {
    panels_svg(&[Panel {
        caption: title,
        left_label: "messages",
        left: messages,
        replicas,
        marks,
    }])
}

/// Draws `panels` one above the other on a shared time scale.
pub fn panels_svg(panels: &[Panel<'_>]) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let height = 420 * panels.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut out, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let t_max = panels
            .iter()
            .flat_map(|p| {
                p.left
                    .iter()
                    .chain(p.replicas)
                    .flat_map(|s| s.points.iter().map(|p| p.0))
                    .chain(p.marks.iter().map(|m| m.t))
            })
            .fold(15.0, f64::max);
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (panel, area) in panels.iter().zip(&areas) {
            draw(area, panel, t_max)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel<'_>,
    t_max: f64,
) -> anyhow::Result<()> {
    let top = |series: &[Series]| {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(1.0, f64::max)
    };
    let (messages, replicas, marks) = (panel.left, panel.replicas, panel.marks);
    let mut chart = ChartBuilder::on(root)
        .caption(panel.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .right_y_label_area_size(if replicas.is_empty() { 0 } else { 50 })
        .build_cartesian_2d(0.0..t_max, 0.0..top(messages) * 1.05)
        .map_err(err)?
        .set_secondary_coord(0.0..t_max, 0i32..(top(replicas).ceil() as i32 + 1));
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(panel.left_label)
        .draw()
        .map_err(err)?;
    if !replicas.is_empty() {
        let replica_top = top(replicas).ceil() as usize + 1;
        chart
            .configure_secondary_axes()
            .y_desc("replicas")
            // One tick per replica while they fit; integers either way.
            .y_labels(replica_top.min(11))
            .draw()
            .map_err(err)?;
    }
    let colors = [BLUE, CYAN, GREEN, RGBColor(255, 140, 0)];
    for (series, color) in messages.iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(
                series.points.clone(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(series.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    for (series, color) in replicas.iter().zip([RED, MAGENTA, BLACK]) {
        let whole = series.points.iter().map(|&(t, v)| (t, v.round() as i32));
        chart
            .draw_secondary_series(LineSeries::new(whole, color.stroke_width(2)))
            .map_err(err)?
            .label(series.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    let message_top = top(messages) * 1.05;
    for (mark, color) in marks.iter().zip([BLACK, RGBColor(120, 120, 120)]) {
        let dashes = DashedLineSeries::new(
            [(mark.t, 0.0), (mark.t, message_top)],
            6,
            4,
            color.stroke_width(1),
        );
        chart
            .draw_series(dashes)
            .map_err(err)?
            .label(mark.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The plan's chart: queue depth, the metric the HPA saw, and replicas,
/// until replicas are back at min, with the drain time and the physical
/// lower bound marked.
pub fn plan_svg(plan: &Plan, title: &str) -> anyhow::Result<String> {
    let mut marks = Vec::new();
    if let Some(drain) = plan.drain_time {
        marks.push(Mark {
            label: format!("drained: {drain:.0} s after the burst"),
            t: plan.burst_at + drain,
        });
    }
    marks.push(Mark {
        label: format!("physical lower bound: {:.0} s", plan.lower_bound),
        t: plan.burst_at + plan.lower_bound,
    });
    let line = |label: &str, f: &dyn Fn(&crate::plan::Tick) -> f64| Series {
        label: label.to_owned(),
        points: plan.timeline.iter().map(|t| (t.t, f(t))).collect(),
    };
    svg(
        title,
        &[
            line("queue depth (ready + unacked)", &|t| {
                f64::from(t.ready + t.unacked)
            }),
            line("metric the HPA saw", &|t| t.metric),
        ],
        &[line("replicas", &|t| f64::from(t.replicas))],
        &marks,
    )
}
