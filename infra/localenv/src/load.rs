//! What a run did under load: the queue's depth over time (sampled while the run goes on), the
//! provider's peak request rate against its limit, and the spike scenario's promises.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use provider_simulator::CapacityStats;

use crate::event_source::queue_depth;

/// The payments queue's depth (visible plus in flight), once a second, for as long as the run
/// goes on: how the queue absorbed the load. With `progress`, says the depth every 10 s (the
/// only sign of life while a large workload is still being submitted).
pub fn sample_depth(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    stop: Arc<AtomicBool>,
    progress: bool,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let (mut samples, started) = (Vec::new(), std::time::Instant::now());
        while !stop.load(Relaxed) {
            if let Ok(depth) = queue_depth(&sqs, &queue_url).await {
                samples.push(depth);
                if progress && samples.len() % 10 == 0 {
                    eprintln!("[pipeline] t+{:>5.1}s  queued {depth}", started.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples
    })
}

/// `samples` as one line of at most `width` block characters, each the largest sample of its
/// stretch, scaled to the largest overall.
pub fn sparkline(samples: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = samples.iter().copied().max().unwrap_or(0);
    if max == 0 || width == 0 {
        return "▁".repeat(samples.len().clamp(1, width.max(1)));
    }
    let per_column = samples.len().div_ceil(width);
    samples
        .chunks(per_column)
        .map(|chunk| {
            let top = chunk.iter().copied().max().unwrap_or(0);
            // Anything above zero shows above the floor.
            let level = if top == 0 { 0 } else { (top * 7 / max).max(1) };
            BARS[level as usize]
        })
        .collect()
}

/// The provider's side of a run: its limit, the processor's pace, what the provider saw.
#[derive(Debug, Clone, Default)]
pub struct ProviderLoad {
    /// The provider's rate limit, requests per second (`None`: unlimited).
    pub limit: Option<u32>,
    /// `PROVIDER_RATE_LIMIT` given to the processor (`None`: unpaced).
    pub paced_at: Option<f64>,
    /// Peaks and refusals, from the simulator.
    pub seen: CapacityStats,
}

impl ProviderLoad {
    /// One line for the run's table.
    pub fn describe(&self) -> String {
        let limit = self.limit.map_or("no limit".to_owned(), |l| format!("limit {l}"));
        let pace = self.paced_at.map_or("unpaced".to_owned(), |p| format!("paced at {p:.2}"));
        format!(
            "{} offered / {} admitted per s ({limit}; processor {pace}); {} throttled",
            self.seen.peak_offered_per_s,
            self.seen.peak_admitted_per_s,
            self.seen.throttled_by_rate + self.seen.throttled_by_concurrency
        )
    }

    /// The spike's promises: the fleet offers at most 1.1 × the limit in any second, and drains
    /// `payments` within 1.25 × `payments / limit`.
    pub fn judge(&self, payments: usize, drained_in: Duration) -> Vec<String> {
        let Some(limit) = self.limit.filter(|l| *l > 0) else { return Vec::new() };
        let mut violations = Vec::new();
        let allowed = 1.1 * f64::from(limit);
        if self.seen.peak_offered_per_s as f64 > allowed {
            violations.push(format!(
                "the provider was offered {} requests in one second, more than 1.1 × its limit of {limit}",
                self.seen.peak_offered_per_s
            ));
        }
        let bound = Duration::from_secs_f64(1.25 * payments as f64 / f64::from(limit));
        if drained_in > bound {
            violations.push(format!(
                "drained in {:.0} s, more than 1.25 × {payments} payments / {limit} per s = {:.0} s",
                drained_in.as_secs_f64(),
                bound.as_secs_f64()
            ));
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_keeps_each_stretchs_peak_and_scales_to_the_largest() {
        assert_eq!(sparkline(&[0, 7, 14, 7, 0], 5), "▁▄█▄▁");
        assert_eq!(sparkline(&[0, 100, 0, 0], 2), "█▁", "a peak is never averaged away");
        assert_eq!(sparkline(&[1, 1000], 2), "▂█", "anything above zero shows");
        assert_eq!(sparkline(&[], 10), "▁");
        assert_eq!(sparkline(&[0, 0, 0], 10), "▁▁▁");
        assert_eq!(sparkline(&(0..600).collect::<Vec<u64>>(), 60).chars().count(), 60);
    }

    #[test]
    fn the_spike_is_judged_against_its_limit_and_its_drain_bound() {
        let seen = CapacityStats { peak_offered_per_s: 4, ..CapacityStats::default() };
        let load = ProviderLoad { limit: Some(4), paced_at: Some(3.6), seen };
        assert!(load.judge(2_000, Duration::from_secs(600)).is_empty());
        assert_eq!(load.judge(2_000, Duration::from_secs(626)).len(), 1, "1.25 × 500 s = 625 s");
        let hammered =
            ProviderLoad { seen: CapacityStats { peak_offered_per_s: 5, ..CapacityStats::default() }, ..load };
        assert_eq!(hammered.judge(2_000, Duration::from_secs(1)).len(), 1, "5 > 4.4");
        let unlimited = ProviderLoad { limit: None, ..hammered };
        assert!(unlimited.judge(2_000, Duration::from_secs(10_000)).is_empty());
    }
}
