// Ctrl+↑ / Ctrl+↓ in a prompt box, as in AUTOMATIC1111: the selection (or the word at the
// caret) becomes `(text:1.1)`, and inside `(text:w)` the weight moves by 0.1. Back at 1 the
// brackets go, leaving the plain text.

export interface Edit {
  text: string;
  /** The selection afterwards: the weighted text, without brackets and weight. */
  start: number;
  end: number;
}

const WEIGHTED = /^\(([^()]*):\s*([+-]?\d*\.?\d+)\s*\)$/;
/** What a word at the caret is made of (embedding names like `<cat-toy>` included). */
const WORD = /[\p{L}\p{N}_\-<>'’]/u;

/** `text` with the weight around `start..end` moved by `delta`; null when there is nothing to weigh. */
export function adjustWeight(text: string, start: number, end: number, delta: number): Edit | null {
  const around = enclosing(text, start, end);
  if (around) return reweigh(text, around, delta);
  if (start === end) [start, end] = wordAt(text, start);
  // Spaces at the selection's ends stay outside the brackets.
  while (start < end && /\s/.test(text[start])) start++;
  while (end > start && /\s/.test(text[end - 1])) end--;
  if (start === end) return null;
  const inner = text.slice(start, end);
  const weight = round(1 + delta);
  if (weight === 1) return { text, start, end };
  const wrapped = `(${inner}:${weight})`;
  return { text: text.slice(0, start) + wrapped + text.slice(end), start: start + 1, end: start + 1 + inner.length };
}

/** The `(inner:w)` group around the selection: its bounds, the inner text's, and its weight. */
function enclosing(text: string, start: number, end: number) {
  const open = text.lastIndexOf("(", start === end ? start - 1 : start - 1);
  if (open < 0) return null;
  const close = text.indexOf(")", end);
  if (close < 0) return null;
  const group = text.slice(open, close + 1);
  const m = WEIGHTED.exec(group);
  if (!m) return null;
  // The selection must lie within the inner text (or on the weight) of this very group.
  if (start < open + 1) return null;
  return { open, close, inner: m[1], weight: Number(m[2]) };
}

function reweigh(text: string, g: { open: number; close: number; inner: string; weight: number }, delta: number): Edit {
  const weight = round(g.weight + delta);
  const before = text.slice(0, g.open);
  const after = text.slice(g.close + 1);
  if (weight === 1) {
    return { text: before + g.inner + after, start: g.open, end: g.open + g.inner.length };
  }
  const group = `(${g.inner}:${weight})`;
  return { text: before + group + after, start: g.open + 1, end: g.open + 1 + g.inner.length };
}

/** The word around `caret` (`[caret, caret]` when there is none). */
function wordAt(text: string, caret: number): [number, number] {
  let start = caret;
  let end = caret;
  while (start > 0 && WORD.test(text[start - 1])) start--;
  while (end < text.length && WORD.test(text[end])) end++;
  return [start, end];
}

/** Two decimals at most, as the weights people type (`1.1`, not `1.1000000000000001`). */
function round(weight: number): number {
  return Math.round(weight * 100) / 100;
}

/** A stretch of the prompt read at `weight` (≠ 1), by source offsets; `weight` 0 marks `BREAK`. */
export interface Span {
  start: number;
  end: number;
  weight: number;
}

const TOKEN = /\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()[\]:]+|:/g;

/**
 * Where the prompt's weights differ from 1, as AUTOMATIC1111's `parse_prompt_attention`
 * reads it (the engine's parser), for highlighting: `(a)` ×1.1, `[a]` ÷1.1, `(a:w)`,
 * nesting multiplies, unclosed brackets weigh to the end, and `BREAK` words.
 */
export function weightedSpans(text: string): Span[] {
  const parts: { start: number; end: number; weight: number }[] = [];
  const round: number[] = [];
  const square: number[] = [];
  const multiply = (from: number, factor: number) => {
    for (let i = from; i < parts.length; i++) parts[i].weight *= factor;
  };
  for (const m of text.matchAll(TOKEN)) {
    const token = m[0];
    const at = m.index;
    if (token === "(") round.push(parts.length);
    else if (token === "[") square.push(parts.length);
    else if (m[1] !== undefined && round.length) {
      const w = Number(m[1]);
      if (Number.isFinite(w)) multiply(round.pop()!, w);
      else parts.push({ start: at, end: at + token.length, weight: 1 });
    } else if (token === ")" && round.length) multiply(round.pop()!, 1.1);
    else if (token === "]" && square.length) multiply(square.pop()!, 1 / 1.1);
    else if (!/^[()[\]]$/.test(token) && !/^:\s*[+-]?[.\d]+\s*\)$/.test(token)) {
      parts.push({ start: at, end: at + token.length, weight: 1 });
    }
  }
  for (const at of round) multiply(at, 1.1);
  for (const at of square) multiply(at, 1 / 1.1);
  const spans: Span[] = [];
  for (const p of parts) {
    if (Math.abs(p.weight - 1) < 1e-9) continue;
    const last = spans[spans.length - 1];
    if (last && last.end === p.start && Math.abs(last.weight - p.weight) < 1e-9) last.end = p.end;
    else spans.push({ ...p });
  }
  for (const m of text.matchAll(/\bBREAK\b/g)) spans.push({ start: m.index, end: m.index + 5, weight: 0 });
  return spans.sort((a, b) => a.start - b.start);
}
