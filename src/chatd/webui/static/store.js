// Conversations and presets, kept in this browser's IndexedDB (they survive a reload
// and a server restart; nothing is stored on the server).

const DB_NAME = 'chatd';
const VERSION = 1;

let dbPromise = null;

function open() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, VERSION);
      request.onupgradeneeded = () => {
        const db = request.result;
        if (!db.objectStoreNames.contains('conversations')) {
          db.createObjectStore('conversations', { keyPath: 'id' });
        }
        if (!db.objectStoreNames.contains('presets')) {
          db.createObjectStore('presets', { keyPath: 'name' });
        }
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  return dbPromise;
}

async function run(storeName, mode, action) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(storeName, mode);
    const request = action(tx.objectStore(storeName));
    tx.oncomplete = () => resolve(request ? request.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export function newConversation() {
  const now = Date.now();
  return { id: crypto.randomUUID(), title: 'New chat', created: now, updated: now,
           messages: [] };
}

/** Newest first. */
export async function listConversations() {
  const all = await run('conversations', 'readonly', (s) => s.getAll());
  return all.sort((a, b) => b.updated - a.updated);
}

export function saveConversation(conversation) {
  conversation.updated = Date.now();
  // A structured clone: the live object may hold fields that are not data.
  const record = JSON.parse(JSON.stringify(conversation));
  return run('conversations', 'readwrite', (s) => s.put(record));
}

export function deleteConversation(id) {
  return run('conversations', 'readwrite', (s) => s.delete(id));
}

export async function listPresets() {
  const all = await run('presets', 'readonly', (s) => s.getAll());
  return all.sort((a, b) => a.name.localeCompare(b.name));
}

export function savePreset(preset) {
  return run('presets', 'readwrite', (s) => s.put(preset));
}

export function deletePreset(name) {
  return run('presets', 'readwrite', (s) => s.delete(name));
}
