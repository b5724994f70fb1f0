import { describe, expect, it } from "vitest";
import { adjustWeight, weightedSpans } from "../src/weights";

/** Applies the edit to `text` where `|…|` marks the selection (or one `|` the caret). */
function press(marked: string, delta: number) {
  const start = marked.indexOf("|");
  const rest = marked.slice(0, start) + marked.slice(start + 1);
  const second = rest.indexOf("|");
  const end = second < 0 ? start : second;
  const text = second < 0 ? rest : rest.slice(0, second) + rest.slice(second + 1);
  const edit = adjustWeight(text, start, end, delta);
  return edit && edit.text.slice(0, edit.start) + "|" + edit.text.slice(edit.start, edit.end) + "|" + edit.text.slice(edit.end);
}

describe("adjustWeight", () => {
  it("wraps the selection, or the word at the caret", () => {
    expect(press("a |red| fox", 0.1)).toBe("a (|red|:1.1) fox");
    expect(press("a r|ed fox", 0.1)).toBe("a (|red|:1.1) fox");
    expect(press("a |red fox|", -0.1)).toBe("a (|red fox|:0.9)");
    expect(press("a | red |fox", 0.1)).toBe("a  (|red|:1.1) fox");
    expect(press("a <cat-t|oy> fox", 0.1)).toBe("a (|<cat-toy>|:1.1) fox");
  });

  it("moves the weight of the group around the selection", () => {
    expect(press("a (r|ed:1.1) fox", 0.1)).toBe("a (|red|:1.2) fox");
    expect(press("a (|red|:1.1) fox", -0.1)).toBe("a |red| fox");
    expect(press("a (red:1.|25) fox", 0.1)).toBe("a (|red|:1.35) fox");
    expect(press("(|red|: 0.5)", -0.1)).toBe("(|red|:0.4)");
  });

  it("leaves other groups alone", () => {
    expect(press("(cat:1.2) r|ed (dog:1.1)", 0.1)).toBe("(cat:1.2) (|red|:1.1) (dog:1.1)");
    expect(press("(cat:1.2) red|", 0.1)).toBe("(cat:1.2) (|red|:1.1)");
  });

  it("does nothing where there is nothing to weigh", () => {
    expect(press("a red , | fox", 0.1)).toBeNull();
    expect(press("|", 0.1)).toBeNull();
  });
});

describe("weightedSpans", () => {
  const marked = (text: string) =>
    weightedSpans(text).map((s) => [text.slice(s.start, s.end), Math.round(s.weight * 1000) / 1000]);

  it("reads A1111's documented examples", () => {
    expect(marked("normal text")).toEqual([]);
    expect(marked("an (important) word")).toEqual([["important", 1.1]]);
    expect(marked("(unbalanced")).toEqual([["unbalanced", 1.1]]);
    expect(marked("\\(literal\\]")).toEqual([]);
    expect(marked("(unnecessary)(parens)")).toEqual([["unnecessary", 1.1], ["parens", 1.1]]);
    // A1111's docstring: one "(" stays open, so the rest weighs 1.1 more ("on" back to 1).
    expect(marked("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")).toEqual([
      ["house", 1.573], [" ", 1.1], [" a ", 1.1], ["hill", 0.55], [", sun, ", 1.1], ["sky", 1.464], [".", 1.1],
    ]);
  });

  it("marks BREAK and leaves a non-numeric weight as weighted text", () => {
    expect(marked("a fox BREAK snow")).toEqual([["BREAK", 0]]);
    expect(marked("a (word:abc) here")).toEqual([["word:abc", 1.1]]);
  });
});
