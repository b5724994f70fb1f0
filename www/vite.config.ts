import { defineConfig } from "vite";

// The tiny test model is served at /models/sd1-tiny so that the app works offline here.
export default defineConfig({
  publicDir: "public",
  server: { fs: { allow: [".."] } },
  worker: { format: "es" },
  build: { target: "es2022" },
  optimizeDeps: { exclude: ["webdiffusion"] },
});
