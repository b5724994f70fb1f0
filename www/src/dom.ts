// The DOM helpers the app needs: find an element the page must have, make one, and wire
// the small patterns several panels share.

export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element as T;
}

/** `<tag attr=…>children</tag>`; attributes are set as given (class, aria-label, …). */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

/** Shows the value of each range input in its `<output for=…>` as it moves. */
export function mirrorRanges(root: ParentNode) {
  for (const output of root.querySelectorAll<HTMLOutputElement>("output[for]")) {
    const input = document.getElementById(output.htmlFor.value) as HTMLInputElement | null;
    if (!input) continue;
    const show = () => (output.value = input.value);
    input.addEventListener("input", show);
    show();
  }
}

/**
 * The "URL + Add" row and file picker of a panel that loads `.safetensors` files (LoRAs,
 * embeddings): `#PREFIX-url`, `#PREFIX-add-url`, `#PREFIX-file`. `add` gets the URL, or a
 * file's bytes with its name without extension; an empty URL gets `empty` said instead.
 */
export function addByUrlOrFile(
  prefix: string,
  add: (source: string | Uint8Array<ArrayBuffer>, name?: string) => void,
  empty: () => void,
) {
  const url = byId<HTMLInputElement>(`${prefix}-url`);
  const file = byId<HTMLInputElement>(`${prefix}-file`);
  byId(`${prefix}-add-url`).addEventListener("click", () => {
    const value = url.value.trim();
    if (value) add(value);
    else empty();
  });
  file.addEventListener("change", async () => {
    const chosen = file.files?.[0];
    file.value = "";
    if (chosen) add(new Uint8Array(await chosen.arrayBuffer()), chosen.name.replace(/\.[^.]+$/, ""));
  });
}
