// How sizes, durations and progress read on screen.

/** "1 step", "4 steps". */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function formatBytes(n: number): string {
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 * 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  return `${(n / (1024 * 1024 * 1024)).toFixed(1)} GB`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "–";
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - m * 60)} s`;
}

/** "12.0 MB of 40.0 MB · 3.1 MB/s · 9 s left" for a download started `elapsed` s ago. */
export function downloadStatus(loaded: number, total: number | null, elapsed: number): string {
  const speed = elapsed > 0 ? loaded / elapsed : 0;
  const parts = [total ? `${formatBytes(loaded)} of ${formatBytes(total)}` : formatBytes(loaded)];
  if (speed > 0) parts.push(`${formatBytes(speed)}/s`);
  if (total && speed > 0) parts.push(`${formatDuration((total - loaded) / speed)} left`);
  return parts.join(" · ");
}

/** "Step 3 of 20 · 1.50 it/s · 12 s left" at `rate` steps per second (0: not known yet). */
export function stepStatus(step: number, total: number, rate: number): string {
  const parts = [`Step ${step} of ${total}`];
  if (rate > 0) {
    // Slow GPUs take seconds per step: "4.2 s/it" reads better than "0.24 it/s".
    parts.push(rate >= 1 ? `${rate.toFixed(2)} it/s` : `${(1 / rate).toFixed(1)} s/it`);
    parts.push(`${formatDuration((total - step) / rate)} left`);
  }
  return parts.join(" · ");
}
