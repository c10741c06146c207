// BotCall service worker: the page shell opens instantly and offline.
//
// Served from /sw.js so its scope ("/") covers /join/<room>. The server puts
// the release hash in VERSION, so each release is a new worker with a new
// cache; the old cache is deleted when the new worker activates.

const VERSION = '__BOTCALL_VERSION__';
const CACHE = `botcall-shell-${VERSION}`;
const SHELL = '/pwa/index.html';
const PRECACHE = [
  SHELL,
  `/pwa/app.js?v=${VERSION}`,
  `/pwa/audio.js?v=${VERSION}`,
  `/pwa/session.js?v=${VERSION}`,
  `/pwa/peer.js?v=${VERSION}`,
  `/pwa/view.js?v=${VERSION}`,
  `/pwa/people.js?v=${VERSION}`,
  `/pwa/recorder-worklet.js?v=${VERSION}`,
  `/pwa/style.css?v=${VERSION}`,
  '/pwa/manifest.webmanifest',
  '/pwa/icons/icon.svg',
  '/pwa/icons/icon-192.png',
  '/pwa/icons/icon-512.png',
  '/pwa/icons/icon-maskable-512.png',
];

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // cache: 'reload' skips the HTTP cache, so the worker never stores a stale copy.
    await cache.addAll(PRECACHE.map((url) => new Request(url, { cache: 'reload' })));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith('botcall-') && key !== CACHE) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

async function cacheFirst(key, request) {
  const cache = await caches.open(CACHE);
  const hit = await cache.match(key, { ignoreSearch: true });
  return hit || fetch(request);
}

self.addEventListener('fetch', (event) => {
  const request = event.request;
  if (request.method !== 'GET') return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === 'navigate' && (url.pathname === '/' || url.pathname.startsWith('/join/'))) {
    // Every room uses the same shell; the page reads the room from its URL.
    event.respondWith(cacheFirst(SHELL, request));
  } else if (url.pathname.startsWith('/pwa/')) {
    event.respondWith(cacheFirst(request, request));
  }
  // Anything else (the API, the signaling WebSocket) goes to the network untouched.
});
