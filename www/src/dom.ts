// The two DOM helpers the app needs: find an element the page must have, and make one.

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
