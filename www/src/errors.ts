// Errors as people can act on them: what happened, and what to do about it. The engine's
// messages name the URL or file at fault (see crate/js/cache.js and crate/src/web/); these
// rules recognise them. Whatever is not recognised shows its first line, never a stack.

export interface Explained {
  title: string;
  /** What to do; may be empty. */
  advice: string;
}

export interface ErrorContext {
  /** The largest things stored, to say what to delete when storage is full. */
  stored?: { name: string; bytes: number }[];
}

export function explain(error: { name?: string; message?: string }, context: ErrorContext = {}): Explained {
  const name = error.name ?? "Error";
  const message = firstLines(error.message ?? String(error));
  if (name === "AbortError") return { title: "Cancelled.", advice: "" };

  if (name === "QuotaExceededError" || /quota/i.test(message)) {
    const largest = [...(context.stored ?? [])].sort((a, b) => b.bytes - a.bytes).slice(0, 2);
    const what = largest.length
      ? `Delete something under Storage: the largest are ${largest.map((s) => `${s.name} (${gb(s.bytes)})`).join(" and ")}.`
      : "Delete models or old images under Storage, or free disk space.";
    return { title: "The browser's storage is full.", advice: what };
  }

  const url = /(https?:\/\/[^\s:;,]+(?::\d+)?[^\s:;,]*)/.exec(message)?.[1];
  const where = "Check the URL: it must point at a diffusers model folder (with model_index.json) or a webdiffusion pack " +
    "(with manifest.json). On the Hugging Face hub use …/resolve/main, not …/tree/main.";
  if (/neither a pack nor/.test(message)) {
    // What each marker file's URL answered (404, a web page, other JSON) is the detail.
    const answers = message.slice(message.indexOf("nor a") + 1).replace(/^[^:]*:\s*/, "").replace(/\. The URL must.*$/s, "");
    return { title: `No model found at ${url ?? "that address"}.`, advice: `${where} What the server sent: ${answers}.` };
  }
  if (/answered with an HTML page/.test(message)) {
    return {
      title: `Nothing found at ${url ?? "that address"}: the server sent a web page instead.`,
      advice: "The server answers missing files with a page (a single-page-app fallback): the file is not there. " + where,
    };
  }
  if (/HTTP 404|not found/i.test(message)) {
    return {
      title: `Nothing found at ${url ?? "that address"}.`,
      advice: where,
    };
  }
  if (/HTTP 40[13]/.test(message)) {
    return {
      title: `The server refused access to ${url ?? "the model"}.`,
      advice: "The model may be gated or private: only models anyone can download work here.",
    };
  }
  if (/download failed|failed to fetch|networkerror|cors/i.test(message)) {
    return {
      title: `Could not download ${url ?? "the model"}.`,
      advice: "You may be offline, or the server does not allow other sites to download from it (CORS). " +
        "The Hugging Face hub allows it; for your own server, send Access-Control-Allow-Origin.",
    };
  }
  if (/out of memory|outofmemory|allocation|device (was )?lost|exceeds the (max|limit)|maxBufferSize|maxStorageBufferBindingSize/i.test(message)) {
    return {
      title: "The GPU ran out of memory.",
      advice: "Try a smaller size (e.g. 512×512 instead of 768×768), f16 precision if your GPU has it, or a q4 pack; " +
        "close other tabs that use the GPU. After a lost device, reload the page.",
    };
  }
  if (/webgpu|no adapter|requestAdapter/i.test(message)) {
    return {
      title: "WebGPU is not available.",
      advice: "Use a recent Chrome, Edge or Safari, or enable WebGPU in your browser's settings.",
    };
  }
  if (/is not a lora|lora.*(match|refused|unknown|no tensors)|does not fit|matches no/i.test(message)) {
    return { title: message, advice: "The file may be for another model family (e.g. SDXL); use one made for this model." };
  }
  return { title: message || "Something went wrong.", advice: "" };
}

/** Whether an error reply means the engine does not know the request or option at all. */
export function isUnsupported(error: { name?: string; message?: string }): boolean {
  return error.name === "NotSupportedError" ||
    /not supported|unsupported|unknown (request|message)|is not a function/i.test(error.message ?? "");
}

/** The message without a stack trace ("    at f (x.js:1:2)" lines), at most three lines. */
function firstLines(message: string): string {
  return message
    .split("\n")
    .filter((l) => !/^\s*at\s|^\s*@|\.js:\d+/.test(l))
    .slice(0, 3)
    .join("\n")
    .replace(/^(Error|RuntimeError|TypeError):\s*/, "")
    .trim();
}

function gb(bytes: number): string {
  return bytes >= 1024 ** 3 ? `${(bytes / 1024 ** 3).toFixed(1)} GB` : `${Math.round(bytes / 1024 ** 2)} MB`;
}
