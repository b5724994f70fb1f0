import { describe, expect, it } from "vitest";
import { SCHEDULERS, parseA1111, parseComfyPrompt, parametersFromChunks, samplerName, schedulerFor, splitLoraTags, toA1111, type Parameters } from "../src/params";

const FULL: Parameters = {
  prompt: "a watercolor fox, in the snow",
  negativePrompt: "blurry, low quality",
  steps: 20,
  scheduler: "dpmpp-2m-karras",
  guidance: 7.5,
  seed: 3405691582,
  width: 512,
  height: 768,
  model: "stable-diffusion-v1-5",
  loras: [{ name: "paper-cut", scale: 0.75, hash: "1a2b3c4d5e6f" }, { name: "ink", scale: -0.4, hash: "abcdefabcdef" }],
  controlnets: [{ module: "canny", model: "control_v11p_sd15_canny", weight: 1, start: 0, end: 0.8, low: 100, high: 200 }],
  embeddings: [{ token: "easynegative", hash: "c74b4e810b03" }],
  strength: 0.6,
  maskBlur: 4,
};

describe("writing A1111 parameters", () => {
  it("writes the prompt with LoRA tags, the negative prompt and the settings line in A1111's order", () => {
    expect(toA1111(FULL)).toBe([
      "a watercolor fox, in the snow <lora:paper-cut:0.75> <lora:ink:-0.4>",
      "Negative prompt: blurry, low quality",
      "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3405691582, Size: 512x768, Model: stable-diffusion-v1-5, " +
        "Denoising strength: 0.6, Mask blur: 4, " +
        'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny, Weight: 1.0, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 0.8", ' +
        'Lora hashes: "paper-cut: 1a2b3c4d5e6f, ink: abcdefabcdef", TI hashes: "easynegative: c74b4e810b03", Version: webdiffusion',
    ].join("\n"));
  });

  it("leaves out what was not used", () => {
    const text = toA1111({ ...FULL, negativePrompt: "", loras: [], controlnets: [], embeddings: [], strength: undefined, maskBlur: undefined, scheduler: "euler-a" });
    expect(text).toBe("a watercolor fox, in the snow\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 3405691582, Size: 512x768, " +
      "Model: stable-diffusion-v1-5, Version: webdiffusion");
  });

  it("quotes a value holding a comma or colon, as A1111 does", () => {
    expect(toA1111({ ...FULL, model: "my model, v2: final" })).toContain('Model: "my model, v2: final",');
  });

  it("reads back everything it writes", () => {
    const parsed = parseA1111(toA1111(FULL));
    const { notes, ...rest } = parsed;
    expect(notes).toEqual([]);
    expect(rest).toEqual(FULL);
  });
});

describe("reading parameters from other programs", () => {
  it("A1111: the embeddings a prompt used (TI hashes)", () => {
    const p = parseA1111('a cat\nNegative prompt: EasyNegative, (bad-hands-5:1.2)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, ' +
      'Size: 512x512, TI hashes: "EasyNegative: c74b4e810b03, bad-hands-5: aa7651be154c", Version: v1.10.1');
    expect(p.embeddings).toEqual([{ token: "EasyNegative", hash: "c74b4e810b03" }, { token: "bad-hands-5", hash: "aa7651be154c" }]);
    expect(p.negativePrompt).toBe("EasyNegative, (bad-hands-5:1.2)");
  });

  it("A1111 1.10: schedule type, hires fields, LoRA tags and hashes", () => {
    const p = parseA1111([
      "masterpiece, a cat on a roof <lora:add_detail:0.6>",
      "Negative prompt: lowres, bad anatomy",
      'Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 512x768, Model hash: 6ce0161689, ' +
        'Model: v1-5-pruned-emaonly, Denoising strength: 0.4, Hires upscale: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1',
    ].join("\n"));
    expect(p).toMatchObject({
      prompt: "masterpiece, a cat on a roof", negativePrompt: "lowres, bad anatomy", steps: 28, scheduler: "dpmpp-2m-karras",
      guidance: 6.5, seed: 1234567890, width: 512, height: 768, model: "v1-5-pruned-emaonly", strength: 0.4,
      loras: [{ name: "add_detail", scale: 0.6, hash: "7c6bad76eb54" }], notes: [],
    });
  });

  it("prompts and negative prompts over several lines", () => {
    const p = parseA1111("line one\nline two\nNegative prompt: bad\nworse\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64");
    expect([p.prompt, p.negativePrompt, p.scheduler]).toEqual(["line one\nline two", "bad\nworse", "euler"]);
  });

  it("text without a settings line is all prompt", () => {
    expect(parseA1111("just a prompt, nothing else")).toMatchObject({ prompt: "just a prompt, nothing else", steps: undefined });
  });

  it("stable-diffusion.cpp, old and new", () => {
    const now = parseA1111("a lovely cat\nSteps: 20, CFG scale: 7.000000, Guidance: 3.500000, Eta: 0.000000, Seed: 42, Size: 512x512, " +
      "Model: v1-5-pruned-emaonly.safetensors, RNG: cuda, Sampler: euler_a discrete, Version: stable-diffusion.cpp");
    expect(now).toMatchObject({ prompt: "a lovely cat", steps: 20, guidance: 7, seed: 42, width: 512, scheduler: "euler-a", notes: [] });
    const old = parseA1111("a dog\nSteps: 8, CFG scale: 5.000000, Seed: 7, Size: 256x256, Model: m.gguf, RNG: cuda, Sampler: dpm++2m karras, Version: stable-diffusion.cpp");
    expect(old.scheduler).toBe("dpmpp-2m-karras");
  });

  it("ComfyUI's A1111-style savers", () => {
    const p = parseA1111("a house\nNegative prompt: ugly\nSteps: 25, Sampler: euler_ancestral, Scheduler: normal, CFG scale: 8.0, Seed: 99, Size: 768x512, Model: dreamshaper_8, Version: ComfyUI");
    expect(p).toMatchObject({ scheduler: "euler-a", guidance: 8, width: 768, height: 512 });
  });

  it("ComfyUI's own prompt graph", () => {
    const graph = {
      3: { class_type: "KSampler", inputs: { seed: 5, steps: 12, cfg: 6, sampler_name: "dpmpp_2m", scheduler: "karras", positive: ["6", 0], negative: ["7", 0], latent_image: ["5", 0], model: ["10", 0] } },
      5: { class_type: "EmptyLatentImage", inputs: { width: 640, height: 448, batch_size: 1 } },
      6: { class_type: "CLIPTextEncode", inputs: { text: "a lighthouse at dusk", clip: ["10", 1] } },
      7: { class_type: "CLIPTextEncode", inputs: { text: "text, watermark", clip: ["10", 1] } },
      10: { class_type: "LoraLoader", inputs: { lora_name: "styles/film_grain.safetensors", strength_model: 0.8, strength_clip: 1 } },
    };
    expect(parametersFromChunks({ prompt: JSON.stringify(graph), workflow: "{}" })).toMatchObject({
      prompt: "a lighthouse at dusk", negativePrompt: "text, watermark", steps: 12, guidance: 6, seed: 5,
      scheduler: "dpmpp-2m-karras", width: 640, height: 448, loras: [{ name: "film_grain", scale: 0.8 }],
    });
    expect(parseComfyPrompt("not json")).toBeNull();
    expect(parseComfyPrompt('{"1": {"class_type": "SaveImage", "inputs": {}}}')).toBeNull();
  });

  it("prefers A1111's parameters to ComfyUI's graph, and has nothing without either", () => {
    expect(parametersFromChunks({ parameters: "x\nSteps: 1, Sampler: DDIM, CFG scale: 1, Seed: 2, Size: 8x8", prompt: "{}" })?.scheduler).toBe("ddim");
    expect(parametersFromChunks({ Software: "GIMP" })).toBeNull();
  });

  it("says when a sampler has no counterpart, or only a close one", () => {
    const lms = parseA1111("x\nSteps: 20, Sampler: LMS, CFG scale: 7, Seed: 1, Size: 512x512");
    expect(lms.scheduler).toBeUndefined();
    expect(lms.notes[0]).toMatch(/LMS.*no counterpart/);
    const sde = parseA1111("x\nSteps: 20, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1, Size: 512x512");
    expect(sde.scheduler).toBe("dpmpp-2m-karras");
    expect(sde.notes[0]).toMatch(/closest/);
  });

  it("reads A1111's ControlNet units, dropping the model hash", () => {
    const p = parseA1111('x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, ControlNet 0: "Module: depth_midas, ' +
      'Model: control_v11f1p_sd15_depth [cfd03158], Weight: 0.8, Resize Mode: Crop and Resize, Processor Res: 512, Guidance Start: 0.1, ' +
      'Guidance End: 0.9, Pixel Perfect: False, Control Mode: Balanced", Version: v1.10.1');
    expect(p.controlnets).toEqual([{ module: "depth_midas", model: "control_v11f1p_sd15_depth", weight: 0.8, start: 0.1, end: 0.9 }]);
  });
});

describe("sampler names", () => {
  it("every scheduler survives a trip through its A1111 name", () => {
    for (const s of SCHEDULERS) expect(schedulerFor(samplerName(s))).toEqual({ scheduler: s, exact: true });
  });
  it.each([
    ["Euler a", "euler-a"], ["k_euler_a", "euler-a"], ["euler_ancestral", "euler-a"], ["Euler", "euler"], ["PLMS", "pndm"],
    ["DPM++ 2M", "dpmpp-2m"], ["dpmpp_2m", "dpmpp-2m"], ["DPM++ 2M Karras", "dpmpp-2m-karras"], ["uni_pc", "unipc"], ["ddim", "ddim"],
    ["LCM", "lcm"], ["Heun", "heun"],
  ])("%s → %s", (name, scheduler) => {
    expect(schedulerFor(name).scheduler).toBe(scheduler);
  });
  it("takes Karras from a separate schedule type", () => {
    expect(schedulerFor("DPM++ 2M", "Karras").scheduler).toBe("dpmpp-2m-karras");
    expect(schedulerFor("dpmpp_2m", "normal").scheduler).toBe("dpmpp-2m");
  });
  it("knows no LMS or DPM2", () => {
    expect(schedulerFor("LMS").scheduler).toBeUndefined();
    expect(schedulerFor("dpm2").scheduler).toBeUndefined();
  });
});

describe("LoRA tags in prompts", () => {
  it("takes them out of the prompt with their scales (1 when absent)", () => {
    expect(splitLoraTags("<lora:a:0.5> a fox <lora:b> in snow <lora:c:0.3:0.9>")).toEqual({
      prompt: "a fox in snow",
      loras: [{ name: "a", scale: 0.5 }, { name: "b", scale: 1 }, { name: "c", scale: 0.3 }],
    });
  });
});
