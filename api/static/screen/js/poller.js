// Polling that pauses while the tab is hidden and catches up at once when it is shown again.
// Each task decides what "catching up" means (the device states poll resumes with since=).

export class Poller {
  constructor(name, intervalMs, task) {
    this.name = name;
    this.intervalMs = intervalMs;
    this.task = task;
    this.timer = null;
    this.running = false;
    this.stopped = true;
    document.addEventListener("visibilitychange", () => this.onVisibility());
  }

  start() {
    this.stopped = false;
    this.runNow();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
  }

  onVisibility() {
    if (this.stopped) return;
    if (document.hidden) {
      clearTimeout(this.timer);
      this.timer = null;
    } else {
      this.runNow();
    }
  }

  async runNow() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.running) return;
    this.running = true;
    try {
      await this.task();
    } catch (err) {
      console.warn(`poll ${this.name}:`, err);
    } finally {
      this.running = false;
      if (!this.stopped && !document.hidden) {
        this.timer = setTimeout(() => this.runNow(), this.intervalMs);
      }
    }
  }
}
