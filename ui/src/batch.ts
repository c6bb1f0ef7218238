// Collects events as they arrive and hands them over once per animation frame, in order, so the
// UI renders at most once a frame however fast the engine streams.

export class FrameBatcher<T> {
  private queue: T[] = [];
  private scheduled = false;

  constructor(
    private flush: (items: T[]) => void,
    private schedule: (cb: () => void) => void = (cb) => requestAnimationFrame(() => cb()),
  ) {}

  push(item: T) {
    this.queue.push(item);
    if (!this.scheduled) {
      this.scheduled = true;
      this.schedule(() => this.drain());
    }
  }

  /** Delivers everything queued now (e.g. when the answer is done). */
  drain() {
    this.scheduled = false;
    if (this.queue.length === 0) return;
    const items = this.queue;
    this.queue = [];
    this.flush(items);
  }
}
