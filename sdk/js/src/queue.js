// A bounded queue read as an async iterator: the SDK puts, one reader takes.

/**
 * Holds at most `limit` items; when full, the oldest is dropped and counted
 * (a reader slower than real time loses old audio, never the newest).
 */
export class DropOldestQueue {
  constructor(limit) {
    this.limit = limit;
    this.dropped = 0;
    this._items = [];
    this._waiter = null;
    this._closed = false;
  }

  put(item) {
    if (this._closed) return;
    if (this._waiter) {
      const waiter = this._waiter;
      this._waiter = null;
      waiter({ value: item, done: false });
      return;
    }
    if (this._items.length >= this.limit) {
      this._items.shift();
      this.dropped += 1;
    }
    this._items.push(item);
  }

  close() {
    this._closed = true;
    if (this._waiter) {
      const waiter = this._waiter;
      this._waiter = null;
      waiter({ value: undefined, done: true });
    }
  }

  next() {
    if (this._items.length) return Promise.resolve({ value: this._items.shift(), done: false });
    if (this._closed) return Promise.resolve({ value: undefined, done: true });
    if (this._waiter) return Promise.reject(new Error('this iterator already has a reader'));
    return new Promise((resolve) => {
      this._waiter = resolve;
    });
  }

  return() {
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}
