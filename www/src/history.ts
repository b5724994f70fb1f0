// Every image made, kept in IndexedDB so that it survives a reload: its parameters and a
// thumbnail in one store (listed at start), the full PNG in another (read when shown).
// The engine keeps its model files in a database of its own.
import type { Parameters } from "./params";

export interface HistoryEntry {
  id: number;
  created: number;
  params: Parameters;
  /** The model's URL (the PNG names the model only). */
  modelUrl: string;
  /** The PNG's size in bytes. */
  bytes: number;
  thumb: Blob;
}

const DB = "webdiffusion-app";
const ENTRIES = "entries";
const PNGS = "pngs";

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
  });
}

export class History {
  private constructor(private readonly db: IDBDatabase) {}

  static async open(): Promise<History> {
    const open = indexedDB.open(DB, 1);
    open.onupgradeneeded = () => {
      open.result.createObjectStore(ENTRIES, { keyPath: "id", autoIncrement: true });
      open.result.createObjectStore(PNGS);
    };
    return new History(await request(open));
  }

  /** All entries, newest first. */
  async list(): Promise<HistoryEntry[]> {
    const tx = this.db.transaction(ENTRIES);
    const all = await request(tx.objectStore(ENTRIES).getAll() as IDBRequest<HistoryEntry[]>);
    return all.reverse();
  }

  async add(entry: Omit<HistoryEntry, "id" | "bytes">, png: Blob): Promise<HistoryEntry> {
    const tx = this.db.transaction([ENTRIES, PNGS], "readwrite");
    const record = { ...entry, bytes: png.size };
    const id = (await request(tx.objectStore(ENTRIES).add(record))) as number;
    tx.objectStore(PNGS).put(png, id);
    await done(tx);
    return { ...record, id };
  }

  async png(id: number): Promise<Blob | undefined> {
    return request(this.db.transaction(PNGS).objectStore(PNGS).get(id) as IDBRequest<Blob | undefined>);
  }

  async delete(id: number): Promise<void> {
    const tx = this.db.transaction([ENTRIES, PNGS], "readwrite");
    tx.objectStore(ENTRIES).delete(id);
    tx.objectStore(PNGS).delete(id);
    await done(tx);
  }

  async clear(): Promise<void> {
    const tx = this.db.transaction([ENTRIES, PNGS], "readwrite");
    tx.objectStore(ENTRIES).clear();
    tx.objectStore(PNGS).clear();
    await done(tx);
  }
}

/** A thumbnail at most `side` pixels wide or high (the image itself when smaller). */
export async function thumbnail(png: Blob, side = 256): Promise<Blob> {
  const bitmap = await createImageBitmap(png);
  const scale = Math.min(1, side / Math.max(bitmap.width, bitmap.height));
  if (scale === 1) return png;
  const canvas = new OffscreenCanvas(Math.round(bitmap.width * scale), Math.round(bitmap.height * scale));
  canvas.getContext("2d")?.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return canvas.convertToBlob({ type: "image/webp", quality: 0.85 });
}
