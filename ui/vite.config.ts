import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// The dev server hands the API (and its websockets) to a running `capsem ui`.
const target = `http://127.0.0.1:${process.env.CAPSEM_UI_PORT || '7317'}`;
const devOrigin = 'http://localhost:5173';

export default defineConfig({
  plugins: [svelte()],
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    // The polyfill is an inline script, which the server's CSP forbids.
    modulePreload: { polyfill: false },
    // Keep every asset a file under /assets/: no data: URLs for scripts or styles.
    assetsInlineLimit: 0,
  },
  server: {
    // The service answers only its own Host and Origin (DNS rebinding and
    // cross-site requests), so the proxy speaks as the service's own page,
    // but only for the dev server's own pages: a request from any other
    // origin keeps its Origin and is refused.
    proxy: {
      '/v1': {
        target,
        ws: true,
        changeOrigin: true,
        configure: (proxy) => {
          const own = (origin: string | undefined) => origin === devOrigin;
          proxy.on('proxyReq', (req, incoming) => {
            if (own(incoming.headers.origin)) req.setHeader('origin', target);
          });
          proxy.on('proxyReqWs', (req, incoming) => {
            if (own(incoming.headers.origin)) req.setHeader('origin', target);
          });
        },
      },
      '/login': { target, changeOrigin: true },
    },
  },
});
