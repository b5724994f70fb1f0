// What the page can learn about the GPU: the adapter's identity, limits and features.
import type { GpuInfo } from "./memory";

// The little of WebGPU's API used here (TypeScript's DOM library has no WebGPU types).
interface Adapter {
  features: ReadonlySet<string>;
  limits: { maxBufferSize: number; maxStorageBufferBindingSize: number };
  info?: { vendor: string; architecture: string; description: string; isFallbackAdapter?: boolean };
  isFallbackAdapter?: boolean;
}
type Gpu = { requestAdapter(): Promise<Adapter | null> };

/** The adapter's description, or null without WebGPU or without an adapter. */
export async function readAdapter(): Promise<GpuInfo | null> {
  const gpu = (navigator as Navigator & { gpu?: Gpu }).gpu;
  if (!gpu) return null;
  const adapter = await gpu.requestAdapter().catch(() => null);
  if (!adapter) return null;
  // `info` arrived in Chrome 127; `isFallbackAdapter` moved into it later.
  const info = adapter.info;
  const fallback = info?.isFallbackAdapter ?? adapter.isFallbackAdapter ?? false;
  return {
    vendor: info?.vendor ?? "",
    architecture: info?.architecture ?? "",
    description: info?.description ?? "",
    fallback,
    f16: adapter.features.has("shader-f16"),
    maxBufferSize: adapter.limits.maxBufferSize,
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    deviceMemory: (navigator as Navigator & { deviceMemory?: number }).deviceMemory,
  };
}

/** "google swiftshader" or "nvidia ampere", for people. */
export function adapterName(gpu: GpuInfo): string {
  return [gpu.vendor, gpu.architecture].filter(Boolean).join(" ") || gpu.description || "an unnamed GPU";
}
