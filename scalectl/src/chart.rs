//! SVG charts: queue depth and replicas over one time axis.

use plotters::prelude::*;

use crate::plan::Plan;

/// Draws the plan: messages (ready + unacked) and the metric the controller
/// saw on the left axis, replicas on the right, against seconds.
pub fn plan_svg(plan: &Plan, title: &str) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t_max = plan.ticks.last().map_or(60.0, |t| t.t).max(15.0);
        let q_max = plan
            .ticks
            .iter()
            .map(|t| f64::from(t.ready + t.unacked).max(t.metric))
            .fold(1.0, f64::max);
        let r_max = plan
            .ticks
            .iter()
            .map(|t| t.replicas)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .right_y_label_area_size(50)
            .build_cartesian_2d(0.0..t_max, 0.0..q_max * 1.05)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .set_secondary_coord(0.0..t_max, 0.0..r_max * 1.1);
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("messages")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .configure_secondary_axes()
            .y_desc("replicas")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let depth = plan
            .ticks
            .iter()
            .map(|t| (t.t, f64::from(t.ready + t.unacked)));
        chart
            .draw_series(LineSeries::new(depth, BLUE.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label("queue depth (ready + unacked)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                plan.ticks.iter().map(|t| (t.t, t.metric)),
                CYAN,
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label("metric the HPA saw")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], CYAN));
        chart
            .draw_secondary_series(LineSeries::new(
                plan.ticks.iter().map(|t| (t.t, f64::from(t.replicas))),
                RED.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label("replicas")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    Ok(svg)
}
