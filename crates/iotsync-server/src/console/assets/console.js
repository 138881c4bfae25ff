// iotsync console: a hand-written single page over the management REST API (/api/v1).
// No framework, no build step (ADR 0006). Every request goes to this origin only; user
// data is put into the page with textContent, never as HTML.
'use strict';

(() => {
  const state = {
    csrf: null,
    timers: [],
    history: new Map(), // `${pid}/${group}` -> [{t, stacked, push, ack}]
    projects: { search: '', page: 1 },
    projectCache: new Map(),
    lastSecret: null, // {title, projectId, appKey, appSecret} shown once, then forgotten
  };
  const POLL_MS = 2000;
  const HISTORY = 60;
  const main = document.getElementById('main');

  // ---------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const el = document.createElementNS(
      tag === 'svg' || attrs?.svg ? 'http://www.w3.org/2000/svg' : 'http://www.w3.org/1999/xhtml', tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false || k === 'svg') continue;
      if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'text') el.textContent = v;
      else if (k === 'class') el.setAttribute('class', v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'checked' || k === 'disabled' || k === 'value' || k === 'hidden' || k === 'selected') el[k] = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // Page parts that are absent (null, undefined, false) are left out, never printed as
  // text: every replace and append of the page goes through these two.
  const present = (nodes) => nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false);
  function fill(el, ...nodes) { el.replaceChildren(...present(nodes)); }
  function add(el, ...nodes) { el.append(...present(nodes)); }

  function svg(tag, attrs, ...children) {
    return h(tag, { ...attrs, svg: true }, ...children);
  }

  const ICON_GEAR = 'M19.4 13a7.6 7.6 0 0 0 0-2l2-1.6-2-3.4-2.4 1a7.4 7.4 0 0 0-1.7-1L15 3.5h-4L10.7 6a7.4 7.4 0 0 0-1.7 1l-2.4-1-2 3.4 2 1.6a7.6 7.6 0 0 0 0 2l-2 1.6 2 3.4 2.4-1a7.4 7.4 0 0 0 1.7 1l.3 2.5h4l.3-2.5a7.4 7.4 0 0 0 1.7-1l2.4 1 2-3.4zM13 15.5a3.5 3.5 0 1 1 0-7 3.5 3.5 0 0 1 0 7z';

  function gearIcon() {
    return svg('svg', { viewBox: '0 0 26 24', 'aria-hidden': 'true', focusable: 'false' },
      svg('path', { d: ICON_GEAR, fill: 'currentColor' }));
  }

  function announce(text) {
    const el = document.getElementById('announce');
    el.textContent = '';
    setTimeout(() => { el.textContent = text; }, 30);
  }

  let toastTimer = null;
  function toast(text) {
    const el = document.getElementById('toast');
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 8000);
  }

  const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : '—');
  const fmtNum = (n) => (typeof n === 'number' ? n.toLocaleString() : '—');
  const fmtRate = (r) => (typeof r === 'number' ? (r >= 10 ? r.toFixed(0) : r.toFixed(1)) : '—');
  function fmtAge(ms) {
    if (ms === null || ms === undefined) return '—';
    const s = Math.floor(ms / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr} h ${m % 60} min`;
    return `${Math.floor(hr / 24)} d ${hr % 24} h`;
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      const ta = h('textarea', { class: 'sr-only', 'aria-hidden': 'true' });
      ta.value = text;
      document.body.append(ta);
      ta.select();
      let ok = false;
      try { ok = document.execCommand('copy'); } catch (_) { ok = false; }
      ta.remove();
      return ok;
    }
  }

  function copyButton(text, what) {
    const b = h('button', { type: 'button', class: 'btn small ghost', 'aria-label': `Copy ${what}` }, 'Copy');
    b.addEventListener('click', async () => {
      const ok = await copyText(text);
      b.textContent = ok ? 'Copied' : 'Copy failed';
      announce(ok ? `${what} copied to the clipboard` : `Could not copy ${what}; select it and copy by hand`);
      setTimeout(() => { b.textContent = 'Copy'; }, 2000);
    });
    return b;
  }

  function copyable(text, what) {
    return h('span', { class: 'copyable' }, h('code', { text }), copyButton(text, what));
  }

  function codeSample(label, code) {
    return h('div', { class: 'code-sample' },
      h('div', { class: 'code-bar' }, h('span', { class: 'hint', text: `${code.split('\n').length} lines` }), copyButton(code, label)),
      h('pre', { tabindex: '0', 'aria-label': label }, h('code', { text: code })));
  }

  /** A table; columns: [{label, cell(row) -> Node|string, num?}]. Rows become labelled blocks on phones. */
  function table(caption, columns, rows, empty) {
    if (!rows.length) return h('p', { class: 'empty' }, empty || 'Nothing yet.');
    return h('div', { class: 'table-wrap' },
      h('table', { class: 'responsive' },
        h('caption', { class: 'sr-only', text: caption }),
        h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null, text: c.label })))),
        h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) =>
          h('td', { 'data-label': c.label, class: c.num ? 'num' : null }, c.cell(r))))))));
  }

  function badge(text, kind) {
    return h('span', { class: `badge ${kind || ''}`, text });
  }

  /** A message area for one form or panel; errors are announced (role=alert). */
  function msgArea() {
    return h('div', { class: 'msg', role: 'alert', 'aria-live': 'assertive' });
  }

  function showError(area, err, form) {
    const body = err && err.body ? err.body : { message: String(err && err.message ? err.message : err) };
    area.className = 'msg error';
    fill(area, h('span', { text: body.message || 'Something went wrong' }),
      body.code ? h('span', { class: 'code', text: `(${body.code})` }) : null);
    if (form) {
      for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
      if (body.field) {
        const input = form.querySelector(`[data-field~="${CSS.escape(body.field)}"]`);
        if (input) {
          input.setAttribute('aria-invalid', 'true');
          input.focus();
        }
      }
    }
  }

  function showOk(area, text) {
    area.className = 'msg ok';
    area.setAttribute('role', 'status');
    area.textContent = text;
  }

  function clearMsg(area, form) {
    area.className = 'msg';
    area.setAttribute('role', 'alert');
    area.textContent = '';
    if (form) for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  }

  function field(label, input, hint) {
    const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
    input.id = id;
    const hintEl = hint ? h('span', { class: 'hint', id: `${id}-hint`, text: hint }) : null;
    if (hintEl) input.setAttribute('aria-describedby', hintEl.id);
    return h('div', { class: 'field' }, h('label', { for: id, text: label }), input, hintEl);
  }

  function confirmDialog(title, text, okLabel) {
    const dlg = document.getElementById('confirm');
    document.getElementById('confirm-title').textContent = title;
    document.getElementById('confirm-text').textContent = text;
    document.getElementById('confirm-ok').textContent = okLabel || 'Confirm';
    return new Promise((resolve) => {
      dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
      dlg.returnValue = 'cancel';
      dlg.showModal();
      document.getElementById('confirm-cancel').focus();
    });
  }

  /** Runs an action for a button: disables it meanwhile, shows the API's error in `area`. */
  async function act(button, area, fn, form) {
    if (area) clearMsg(area, form);
    if (button) button.disabled = true;
    try {
      return await fn();
    } catch (e) {
      if (area) showError(area, e, form);
      else toast(e.body ? `${e.body.message} (${e.body.code})` : String(e));
      return undefined;
    } finally {
      if (button && button.isConnected) button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      super(body && body.message ? body.message : `HTTP ${status}`);
      this.status = status;
      this.body = body || { code: `http_${status}`, message: `HTTP ${status}` };
    }
  }

  async function request(method, url, body) {
    const opt = { method, headers: { Accept: 'application/json' }, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET' && state.csrf) opt.headers['X-CSRF-Token'] = state.csrf;
    if (body !== undefined) {
      opt.headers['Content-Type'] = 'application/json';
      opt.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(url, opt);
    } catch (e) {
      throw new ApiError(0, { code: 'network', message: `The server could not be reached (${e.message}).` });
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = { code: `http_${resp.status}`, message: text.slice(0, 300) }; }
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  async function api(method, path, body) {
    try {
      return await request(method, `/api/v1${path}`, body);
    } catch (e) {
      if (e.status === 401) {
        state.csrf = null;
        showSignIn('Your console session has ended. Sign in again to continue.');
      }
      throw e;
    }
  }

  const enc = encodeURIComponent;
  const P = (pid) => `/projects/${enc(pid)}`;

  async function project(pid) {
    const p = await api('GET', P(pid));
    state.projectCache.set(pid, p);
    return p;
  }

  // ---------------------------------------------------------------- routing

  function stopTimers() {
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
  }

  function setPage(title, ...nodes) {
    stopTimers();
    document.title = `${title} · iotsync console`;
    // A page part that is absent (null, undefined, false) is left out, never printed.
    fill(main, ...nodes);
    const h1 = main.querySelector('h1');
    if (h1) {
      h1.setAttribute('tabindex', '-1');
      h1.focus({ preventScroll: true });
    }
  }

  function route() {
    const hash = location.hash.replace(/^#/, '') || '/projects';
    const parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
    document.getElementById('nav-projects').setAttribute('aria-current', parts[0] === 'projects' ? 'page' : 'false');
    if (!state.csrf) return;
    if (parts[0] === 'p' && parts[1]) {
      const pid = parts[1];
      if (parts[2] === 'settings') return renderSettings(pid, parts[3] === 'api' ? 'api' : 'sync');
      if (parts[2] === 'monitoring') return renderMonitoring(pid);
      return renderHome(pid);
    }
    return renderProjects();
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function projectHead(p, current) {
    const link = (href, label, key) => h('a', { class: 'btn ghost small', href, 'aria-current': current === key ? 'page' : null }, label);
    const settings = h('a', { class: 'btn ghost small', href: `#/p/${enc(p.projectId)}/settings/sync`, 'aria-current': current === 'settings' ? 'page' : null },
      gearIcon(), 'Project Settings');
    return h('div', { class: 'page-head' },
      h('div', {},
        h('div', { class: 'crumbs' }, h('a', { href: '#/projects', text: 'Project Management' }), ' / ', p.name),
        h('h1', { text: current === 'settings' ? 'Project Settings' : current === 'monitoring' ? 'Monitoring' : p.name }),
        h('p', { class: 'sub' }, 'Project ', h('code', { text: p.projectId }), ' · AppKey ', h('code', { text: p.appKey }))),
      h('nav', { class: 'subnav', 'aria-label': 'Project' },
        link(`#/p/${enc(p.projectId)}`, 'Home', 'home'),
        settings,
        link(`#/p/${enc(p.projectId)}/monitoring`, 'Monitoring', 'monitoring')));
  }

  async function loadOrFail(fn) {
    try {
      return await fn();
    } catch (e) {
      if (e.status !== 401) {
        const area = msgArea();
        setPage('Error', h('h1', { text: 'Could not load this page' }), area,
          h('p', {}, h('a', { href: '#/projects', text: 'Back to Project Management' })));
        showError(area, e);
      }
      return null;
    }
  }

  // ---------------------------------------------------------------- sign-in

  function showSignIn(notice) {
    stopTimers();
    state.csrf = null;
    document.getElementById('topbar').hidden = true;
    const area = msgArea();
    const input = h('input', { type: 'password', name: 'token', autocomplete: 'current-password', required: true, 'data-field': 'token', spellcheck: 'false' });
    const submit = h('button', { type: 'submit', class: 'btn' }, 'Sign in');
    const form = h('form', { novalidate: true },
      field('Operator token', input, 'Set with --operator-token or IOTSYNC_OPERATOR_TOKEN, or generated at first start into <data-dir>/operator-token.'),
      area, submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await act(submit, area, async () => {
        const s = await request('POST', '/console/session', { token: input.value });
        state.csrf = s.csrfToken;
        input.value = '';
        startApp();
      }, form);
    });
    setPage('Sign in', h('section', { class: 'signin panel', 'aria-labelledby': 'signin-title' },
      h('h1', { id: 'signin-title' }, h('img', { src: '/console/favicon.svg', alt: '', width: 28, height: 28 }), 'Sign in to iotsync'),
      notice ? h('p', { class: 'callout', role: 'status', text: notice }) : null,
      form));
    input.focus();
  }

  async function signOut() {
    try {
      await request('DELETE', '/console/session');
    } catch (_) { /* the session is gone either way */ }
    showSignIn('You are signed out.');
  }

  function startApp() {
    document.getElementById('topbar').hidden = false;
    route();
  }

  // ---------------------------------------------------------------- Project Management

  function secretPanel(info) {
    const done = h('button', { type: 'button', class: 'btn' }, 'I have saved the AppSecret');
    const panel = h('section', { class: 'secret', 'aria-labelledby': 'secret-title', tabindex: '-1' },
      h('h2', { id: 'secret-title', text: info.title }),
      h('p', {}, h('strong', { text: 'The AppSecret is shown only now.' }),
        ' Copy it and keep it safe: consumers and cloud API clients sign with it, and it cannot be shown again (rotate it to get a new one).'),
      h('dl', {},
        h('dt', { text: 'Project ID' }), h('dd', {}, h('code', { text: info.projectId })),
        h('dt', { text: 'AppKey' }), h('dd', {}, h('code', { 'data-secret': 'appKey', text: info.appKey }), copyButton(info.appKey, 'AppKey')),
        h('dt', { text: 'AppSecret' }), h('dd', {}, h('code', { 'data-secret': 'appSecret', text: info.appSecret }), copyButton(info.appSecret, 'AppSecret'))),
      done);
    done.addEventListener('click', () => {
      state.lastSecret = null;
      panel.remove();
      announce('Credentials hidden');
    });
    return panel;
  }

  async function renderProjects() {
    const q = state.projects;
    const data = await loadOrFail(() => api('GET', `/projects?pageSize=20&pageNo=${q.page}${q.search ? `&search=${enc(q.search)}` : ''}`));
    if (!data) return;

    const createArea = msgArea();
    const nameInput = h('input', { type: 'text', name: 'name', maxlength: 64, required: true, 'data-field': 'name' });
    const createBtn = h('button', { type: 'submit', class: 'btn' }, 'Create project');
    const createForm = h('form', { class: 'inline', novalidate: true }, field('Project name', nameInput), createBtn);
    createForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const p = await act(createBtn, createArea, () => api('POST', '/projects', { name: nameInput.value.trim() }), createForm);
      if (p) {
        state.lastSecret = { title: `Project "${p.name}" created`, ...p };
        state.projects = { search: '', page: 1 };
        announce(`Project ${p.name} created`);
        await renderProjects();
      }
    });

    const searchInput = h('input', { type: 'search', name: 'search', value: q.search, placeholder: 'Name, project ID or AppKey' });
    const searchForm = h('form', { class: 'inline', role: 'search' }, field('Search projects', searchInput),
      h('button', { type: 'submit', class: 'btn ghost' }, 'Search'),
      q.search ? h('button', { type: 'button', class: 'btn ghost', onclick: () => { state.projects = { search: '', page: 1 }; renderProjects(); } }, 'Clear') : null);
    searchForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      state.projects = { search: searchInput.value.trim(), page: 1 };
      renderProjects().then(() => announce(`${document.querySelectorAll('#projects-table tbody tr').length} projects found`));
    });

    const rowArea = msgArea();
    const rotate = async (p, btn) => {
      const ok = await confirmDialog(`Rotate the credentials of "${p.name}"?`,
        'A new AppSecret replaces the current one at once. Consumers (AMQP, HTTP/2) and cloud API clients signing with the old secret stop working until they use the new one.',
        'Rotate AppSecret');
      if (!ok) return;
      const r = await act(btn, rowArea, () => api('POST', `${P(p.projectId)}/rotate-secret`));
      if (r) {
        state.lastSecret = { title: `New credentials for "${r.name}"`, ...r };
        await renderProjects();
      }
    };

    const pages = Math.max(1, Math.ceil(data.total / data.pageSize));
    const list = table('Projects', [
      { label: 'Name', cell: (p) => h('a', { href: `#/p/${enc(p.projectId)}`, text: p.name }) },
      { label: 'Project ID', cell: (p) => h('code', { text: p.projectId }) },
      { label: 'AppKey', cell: (p) => h('code', { text: p.appKey }) },
      { label: 'Created', cell: (p) => fmtTime(p.createdAt) },
      { label: 'Actions', cell: (p) => {
        const rb = h('button', { type: 'button', class: 'btn small ghost' }, 'Rotate credentials');
        rb.addEventListener('click', () => rotate(p, rb));
        return h('div', { class: 'actions' },
          h('a', { class: 'icon-btn', href: `#/p/${enc(p.projectId)}/settings/sync`, title: 'Project Settings', 'aria-label': `Project Settings of ${p.name}` }, gearIcon()),
          rb);
      } },
    ], data.items, q.search ? `No project matches "${q.search}".` : 'No projects yet: create the first one above.');
    const tableEl = list.querySelector('table');
    if (tableEl) tableEl.id = 'projects-table';

    const pager = h('div', { class: 'pager' },
      h('button', { type: 'button', class: 'btn small ghost', disabled: q.page <= 1, onclick: () => { q.page -= 1; renderProjects(); } }, 'Previous'),
      h('span', { text: `Page ${q.page} of ${pages} · ${data.total} project${data.total === 1 ? '' : 's'}` }),
      h('button', { type: 'button', class: 'btn small ghost', disabled: q.page >= pages, onclick: () => { q.page += 1; renderProjects(); } }, 'Next'));

    const secret = state.lastSecret ? secretPanel(state.lastSecret) : null;
    setPage('Project Management',
      h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Project Management' }),
        h('p', { class: 'sub', text: 'Projects keep enterprise servers in sync with their devices and users.' }))),
      secret,
      h('section', { class: 'panel', 'aria-labelledby': 'create-title' }, h('h2', { id: 'create-title', text: 'Create a project' }), createForm, createArea),
      h('section', { class: 'panel', 'aria-labelledby': 'list-title' },
        h('header', {}, h('h2', { id: 'list-title', text: 'Projects' })), searchForm, rowArea, list, pager));
    if (secret) secret.focus();
  }

  // ---------------------------------------------------------------- Project home

  async function renderHome(pid) {
    const all = await loadOrFail(() => Promise.all([
      project(pid),
      api('GET', `${P(pid)}/products?pageSize=200`),
      api('GET', `${P(pid)}/devices?pageSize=200`),
      api('GET', `${P(pid)}/users?pageSize=200`),
      api('GET', `${P(pid)}/bindings?pageSize=200`),
      api('GET', `${P(pid)}/sync`),
    ]));
    if (!all) return;
    const [p, products, devices, users, bindings, sync] = all;
    const props = new Map(await Promise.all(devices.items.slice(0, 50).map(async (d) => {
      try { return [d.iotId, await api('GET', `${P(pid)}/devices/${enc(d.iotId)}/properties`)]; } catch (_) { return [d.iotId, null]; }
    })));
    const reload = () => renderHome(pid);
    const productName = new Map(products.items.map((x) => [x.productKey, x.name]));
    const userName = new Map(users.items.map((u) => [u.identityId, u.loginName]));
    const deviceName = new Map(devices.items.map((d) => [d.iotId, `${d.deviceName} (${productName.get(d.productKey) || d.productKey})`]));

    // Products
    const prodArea = msgArea();
    const pName = h('input', { type: 'text', 'data-field': 'name', required: true, maxlength: 64 });
    const pType = h('input', { type: 'text', 'data-field': 'deviceType', required: true, value: 'Light' });
    const pKey = h('input', { type: 'text', 'data-field': 'productKey', placeholder: 'generated when empty' });
    const pBtn = h('button', { type: 'submit', class: 'btn' }, 'Add product');
    const prodForm = h('form', { class: 'inline', novalidate: true, 'aria-label': 'Add product' },
      field('Product name', pName), field('Device type', pType), field('ProductKey (optional)', pKey), pBtn);
    prodForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: pName.value.trim(), deviceType: pType.value.trim() };
      if (pKey.value.trim()) body.productKey = pKey.value.trim();
      const r = await act(pBtn, prodArea, () => api('POST', `${P(pid)}/products`, body), prodForm);
      if (r) { announce(`Product ${r.name} added`); await reload(); }
    });

    // Devices
    const devArea = msgArea();
    const dProduct = h('select', { 'data-field': 'productKey' }, products.items.map((x) => h('option', { value: x.productKey, text: `${x.name} (${x.productKey})` })));
    const dName = h('input', { type: 'text', 'data-field': 'deviceName', required: true, maxlength: 32 });
    const dBtn = h('button', { type: 'submit', class: 'btn', disabled: !products.items.length }, 'Add device');
    const devForm = h('form', { class: 'inline', novalidate: true, 'aria-label': 'Add device' },
      field('Product', dProduct), field('Device name', dName, '4 to 32: letters, digits and -_@.:'), dBtn);
    // Shown on the re-rendered page once, then forgotten.
    const deviceSecret = state.deviceSecret && state.deviceSecret.projectId === pid ? state.deviceSecret : null;
    state.deviceSecret = null;
    devForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const r = await act(dBtn, devArea, () => api('POST', `${P(pid)}/products/${enc(dProduct.value)}/devices`, { deviceName: dName.value.trim() }), devForm);
      if (r) {
        state.deviceSecret = { ...r, projectId: pid };
        announce(`Device ${r.deviceName} added`);
        await reload();
      }
    });
    const devRowArea = msgArea();
    const toggleDevice = async (d, btn) => {
      const verb = d.status === 'disabled' ? 'enable' : 'disable';
      const r = await act(btn, devRowArea, () => api('POST', `${P(pid)}/devices/${enc(d.iotId)}/${verb}`, {}));
      if (r) await reload();
    };

    // Users
    const userArea = msgArea();
    const uLogin = h('input', { type: 'text', 'data-field': 'loginName', required: true });
    const uNick = h('input', { type: 'text', 'data-field': 'nickName' });
    const uEmail = h('input', { type: 'email', 'data-field': 'email' });
    const uPhone = h('input', { type: 'text', 'data-field': 'phone', inputmode: 'tel' });
    const uBtn = h('button', { type: 'submit', class: 'btn' }, 'Add user');
    const userForm = h('form', { class: 'inline', novalidate: true, 'aria-label': 'Add user' },
      field('Login name', uLogin), field('Nickname', uNick), field('Email', uEmail), field('Phone', uPhone), uBtn);
    userForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { loginName: uLogin.value.trim(), nickName: uNick.value.trim(), email: uEmail.value.trim(), phone: uPhone.value.trim() };
      const r = await act(uBtn, userArea, () => api('POST', `${P(pid)}/users`, body), userForm);
      if (r) { announce(`User ${r.loginName} added`); await reload(); }
    });

    // Bindings
    const bindArea = msgArea();
    const bUser = h('select', { 'data-field': 'identityId' }, users.items.map((u) => h('option', { value: u.identityId, text: u.loginName })));
    const bDevice = h('select', { 'data-field': 'iotId' }, devices.items.map((d) => h('option', { value: d.iotId, text: deviceName.get(d.iotId) })));
    const bOwned = h('select', { 'data-field': 'owned' }, h('option', { value: '1', text: 'Owner' }), h('option', { value: '0', text: 'Shared' }));
    const bBtn = h('button', { type: 'submit', class: 'btn', disabled: !users.items.length || !devices.items.length }, 'Bind');
    const bindForm = h('form', { class: 'inline', novalidate: true, 'aria-label': 'Bind a user to a device' },
      field('User', bUser), field('Device', bDevice), field('Role', bOwned), bBtn);
    bindForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const r = await act(bBtn, bindArea, () => api('POST', `${P(pid)}/bindings`, { identityId: bUser.value, iotId: bDevice.value, owned: Number(bOwned.value) }), bindForm);
      if (r) { announce('Binding added'); await reload(); }
    });
    const unbind = async (b, btn) => {
      const r = await act(btn, bindArea, () => api('DELETE', `${P(pid)}/bindings/${enc(b.identityId)}/${enc(b.iotId)}`));
      if (r !== undefined) await reload();
    };

    const propList = (list) => {
      if (list === null) return h('span', { class: 'muted', text: 'unavailable' });
      if (!list || !list.length) return h('span', { class: 'muted', text: 'none reported' });
      return h('ul', { class: 'props' }, list.map((x) => h('li', {}, h('code', { text: x.identifier }), ' = ',
        h('code', { text: JSON.stringify(x.value) }), h('span', { class: 'muted', text: ` · ${fmtTime(x.time)}` }))));
    };

    const syncText = sync.enabled ? `On · ${sync.method ? sync.method.toUpperCase() : sync.mode.replace('_', ' ')}` : 'Off';
    const cards = h('div', { class: 'cards' },
      [['Products', products.total], ['Devices', devices.total], ['Users', users.total], ['Bindings', bindings.total]]
        .map(([k, v]) => h('div', { class: 'card' }, h('div', { class: 'k', text: k }), h('div', { class: 'v', text: fmtNum(v) }))),
      h('a', { class: 'card', href: `#/p/${enc(pid)}/settings/sync` }, h('div', { class: 'k', text: 'Data synchronization' }), h('div', { class: 'v', text: syncText })));

    const devSecretPanel = deviceSecret ? h('div', { class: 'secret', role: 'status' },
      h('strong', { text: `Device ${deviceSecret.deviceName} created.` }), ' Its DeviceSecret is shown only now: ',
      copyable(deviceSecret.deviceSecret, 'DeviceSecret')) : null;

    setPage(p.name, projectHead(p, 'home'), cards,
      h('section', { class: 'panel', 'aria-labelledby': 'products-title' },
        h('h2', { id: 'products-title', text: 'Products' }),
        table('Products', [
          { label: 'Name', cell: (x) => x.name },
          { label: 'ProductKey', cell: (x) => h('code', { text: x.productKey }) },
          { label: 'Device type', cell: (x) => x.deviceType },
          { label: 'Data sync', cell: (x) => (sync.enabled ? badge(x.syncEnabled ? 'On' : 'Off', x.syncEnabled ? 'ok' : '') : badge('Sync off')) },
          { label: 'Created', cell: (x) => fmtTime(x.createdAt) },
        ], products.items, 'No products yet.'),
        prodForm, prodArea),
      h('section', { class: 'panel', 'aria-labelledby': 'devices-title' },
        h('h2', { id: 'devices-title', text: 'Devices' }),
        devSecretPanel, devRowArea,
        table('Devices', [
          { label: 'Device name', cell: (d) => d.deviceName },
          { label: 'Product', cell: (d) => productName.get(d.productKey) || d.productKey },
          { label: 'iotId', cell: (d) => h('code', { class: 'wrap-anywhere', text: d.iotId }) },
          { label: 'Status', cell: (d) => badge(d.status, d.status) },
          { label: 'Last properties', cell: (d) => propList(props.get(d.iotId)) },
          { label: 'Actions', cell: (d) => {
            const b = h('button', { type: 'button', class: `btn small ghost${d.status === 'disabled' ? '' : ' danger'}`, 'aria-label': `${d.status === 'disabled' ? 'Enable' : 'Disable'} ${d.deviceName}` },
              d.status === 'disabled' ? 'Enable' : 'Disable');
            b.addEventListener('click', () => toggleDevice(d, b));
            return b;
          } },
        ], devices.items, products.items.length ? 'No devices yet.' : 'Add a product first, then its devices.'),
        devForm, devArea),
      h('div', { class: 'grid' },
        h('section', { class: 'panel', 'aria-labelledby': 'users-title' },
          h('h2', { id: 'users-title', text: 'Users' }),
          table('Users', [
            { label: 'Login name', cell: (u) => u.loginName },
            { label: 'Nickname', cell: (u) => u.nickName || '—' },
            { label: 'Email', cell: (u) => u.email || '—' },
            { label: 'identityId', cell: (u) => h('code', { class: 'wrap-anywhere', text: u.identityId }) },
          ], users.items, 'No users yet.'),
          userForm, userArea),
        h('section', { class: 'panel', 'aria-labelledby': 'bindings-title' },
          h('h2', { id: 'bindings-title', text: 'Bindings' }),
          table('Bindings', [
            { label: 'User', cell: (b) => userName.get(b.identityId) || b.identityId },
            { label: 'Device', cell: (b) => deviceName.get(b.iotId) || b.deviceName },
            { label: 'Role', cell: (b) => (b.owned === 1 ? 'Owner' : 'Shared') },
            { label: 'Actions', cell: (b) => {
              const btn = h('button', { type: 'button', class: 'btn small ghost danger', 'aria-label': `Unbind ${userName.get(b.identityId) || b.identityId} from ${b.deviceName}` }, 'Unbind');
              btn.addEventListener('click', () => unbind(b, btn));
              return btn;
            } },
          ], bindings.items, 'No bindings yet.'),
          bindForm, bindArea)));
  }

  // ---------------------------------------------------------------- Project Settings

  function settingsTabs(pid, active) {
    const tabs = [['sync', 'Device Data Synchronization'], ['api', 'API Operations']];
    const list = h('div', { role: 'tablist', 'aria-label': 'Project Settings' },
      tabs.map(([key, label]) => h('a', {
        role: 'tab', id: `tab-${key}`, href: `#/p/${enc(pid)}/settings/${key}`,
        'aria-selected': String(key === active), 'aria-controls': 'tabpanel', tabindex: key === active ? '0' : '-1', text: label,
      })));
    list.addEventListener('keydown', (ev) => {
      if (ev.key !== 'ArrowRight' && ev.key !== 'ArrowLeft') return;
      const i = tabs.findIndex(([k]) => k === active);
      const next = tabs[(i + (ev.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length][0];
      ev.preventDefault();
      go(`#/p/${enc(pid)}/settings/${next}`);
      setTimeout(() => document.getElementById(`tab-${next}`)?.focus(), 50);
    });
    return list;
  }

  async function renderSettings(pid, tab) {
    const p = await loadOrFail(() => project(pid));
    if (!p) return;
    const panel = h('div', { role: 'tabpanel', id: 'tabpanel', 'aria-labelledby': `tab-${tab}` }, h('p', { class: 'loading', text: 'Loading…' }));
    setPage(`Project Settings · ${p.name}`, projectHead(p, 'settings'), settingsTabs(pid, tab), panel);
    if (tab === 'api') await fillApiOperations(p, panel);
    else await fillSync(p, panel);
  }

  const METHOD_LABEL = { amqp: 'AMQP 1.0', http2: 'HTTP/2 (gRPC)', legacy_http: 'Legacy HTTP push', none: 'Not synchronized' };
  const RETENTION = { amqp: '1 day', http2: '7 days' };

  function syncExplanation(s) {
    if (s.mode === 'mixed') {
      return h('div', { class: 'callout warn', 'data-state': 'mixed' },
        h('h3', { text: 'Mixed configuration (brought over from the previous platform)' }),
        h('p', { text: 'User data is pushed over legacy HTTP and device data over HTTP/2. This keeps working as it is.' }),
        h('p', {}, h('strong', { text: 'To change the method you must disable data synchronization and enable it again with a single method' }),
          ' — AMQP (recommended) or HTTP/2 — which then carries both device and user data. Once disabled, legacy HTTP push can never be enabled again.'));
    }
    if (s.mode === 'legacy_only') {
      return h('div', { class: 'callout warn', 'data-state': 'legacy' },
        h('h3', { text: 'Legacy HTTP push (brought over from the previous platform)' }),
        h('p', { text: 'User data is pushed to your HTTP URL; device data is not synchronized. It keeps working as it is, and you can change the URL below.' }),
        h('p', {}, h('strong', { text: 'Legacy HTTP push cannot be enabled again once disabled.' }),
          ' To synchronize device data too, disable data synchronization and enable it with AMQP (recommended) or HTTP/2.'));
    }
    if (s.enabled && s.method === 'http2') {
      return h('div', { class: 'callout', 'data-state': 'http2' },
        h('h3', { text: 'You can switch directly to AMQP' }),
        h('p', { text: 'No need to disable: message format and content stay exactly the same, and the messages already stacked carry over (from then on kept for 1 day, the AMQP retention). Connect your consumers to the AMQP endpoint after switching.' }));
    }
    if (s.enabled && s.method === 'amqp') {
      return h('p', { class: 'hint', text: 'AMQP carries both device and user data. To use HTTP/2 instead, disable data synchronization and enable it again with HTTP/2.' });
    }
    return null;
  }

  function enableForm(pid, s, area, reload) {
    const radio = (value, label, desc, rec) => h('label', { class: 'choice' },
      h('input', { type: 'radio', name: 'method', value, checked: value === 'amqp' }),
      h('span', {}, label, rec ? [' ', badge('Recommended', 'rec')] : null, h('span', { class: 'desc', text: desc })));
    const btn = h('button', { type: 'submit', class: 'btn' }, 'Enable');
    const form = h('form', { novalidate: true, 'aria-label': 'Enable data synchronization' },
      h('fieldset', {}, h('legend', { text: 'Push method' }),
        radio('amqp', 'AMQP 1.0', 'Unacknowledged messages are kept for up to 1 day. Use the AMQP SDK or any AMQP 1.0 client.', true),
        radio('http2', 'HTTP/2 (gRPC)', 'Unacknowledged messages are kept for up to 7 days. Use the HTTP/2 SDK or generated gRPC stubs.', false),
        h('p', { class: 'hint', text: 'Legacy HTTP push can no longer be enabled.' })),
      h('p', { class: 'hint', text: 'Enabling turns synchronization on for every product of the project; you can switch products off afterwards.' }),
      btn);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const method = form.querySelector('input[name=method]:checked')?.value || 'amqp';
      const r = await act(btn, area, () => api('POST', `${P(pid)}/sync/enable`, { method }), form);
      if (r) { announce(`Data synchronization enabled over ${METHOD_LABEL[method]}`); await reload(`Data synchronization enabled over ${METHOD_LABEL[method]}.`); }
    });
    return form;
  }

  // One of the SDK's examples as served by the server (the file the build compiles),
  // with the command that runs it against this project.
  function sampleBlock(sm, endpoint, p) {
    const env = `IOTSYNC_ENDPOINT=${endpoint} IOTSYNC_APP_KEY=${p.appKey} IOTSYNC_APP_SECRET=<AppSecret>`;
    const run = sm.file.endsWith('.py')
      ? `${env} python3 ${sm.file}`
      : sm.channel === 'http2'
        ? `IOTSYNC_APP_KEY=${p.appKey} IOTSYNC_APP_SECRET=<AppSecret> cargo run -p iotsync-sdk --example ${sm.file.replace(/^.*\//, '').replace(/\.rs$/, '')} -- ${endpoint}`
        : `${env} cargo run -p iotsync-sdk --example ${sm.file.replace(/^.*\//, '').replace(/\.rs$/, '')}`;
    return [
      h('h3', { text: sm.title }),
      h('p', { class: 'hint' }, 'From ', h('code', { text: sm.file }), '. Run it with:'),
      codeSample(`${sm.name} command`, run),
      codeSample(sm.name, sm.code),
    ];
  }

  function connectionDetails(p, conn, s) {
    const amqp = conn.amqp || conn.amqps || 'amqp://<host>:<port>';
    const h2 = conn.http2 || conn.http2Tls || 'http://<host>:<port>';
    const grpc = `# HTTP/2 (gRPC) request metadata, computed like the AMQP app-key form
x-auth-name: appkey
x-auth-param-app-key: ${p.appKey}
x-auth-param-sign-method: SHA256
x-auth-param-random: <ms since epoch>
x-auth-param-sign: hex(HMAC-SHA256(key = AppSecret, message = "random=<ms>"))
x-auth-param-group: ${p.appKey}          # optional; default group = AppKey
# endpoint: ${h2}
`;
    const facts = h('dl', { class: 'facts' },
      conn.amqp ? [h('dt', { text: 'AMQP endpoint' }), h('dd', {}, copyable(conn.amqp, 'AMQP endpoint'), ' ', badge('development, plain TCP'))] : null,
      conn.amqps ? [h('dt', { text: 'AMQP over TLS' }), h('dd', {}, copyable(conn.amqps, 'AMQPS endpoint'))] : null,
      conn.http2 ? [h('dt', { text: 'HTTP/2 endpoint' }), h('dd', {}, copyable(conn.http2, 'HTTP/2 endpoint'), ' ', badge('h2c, development'))] : null,
      conn.http2Tls ? [h('dt', { text: 'HTTP/2 over TLS' }), h('dd', {}, copyable(conn.http2Tls, 'HTTP/2 TLS endpoint'))] : null,
      h('dt', { text: 'AppKey' }), h('dd', {}, copyable(p.appKey, 'AppKey')),
      h('dt', { text: 'Consumer group' }), h('dd', {}, 'default: the AppKey (', h('code', { text: p.appKey }), '); any other name makes a separate group'),
      h('dt', { text: 'SASL' }), h('dd', {}, 'PLAIN; attach one receiver link (any address, e.g. ', h('code', { text: 'default' }), ') within 15 s'),
      h('dt', { text: 'Username' }), h('dd', {}, copyable(`\${clientId}|authMode=appkey,signMethod=SHA256,random=\${ms},appKey=${p.appKey},groupId=\${group}|`, 'username template')),
      h('dt', { text: 'Password' }), h('dd', {}, h('code', { text: 'Base64(HMAC-SHA256(key = AppSecret, message = "random=${ms}"))' })),
      h('dt', { text: 'Retention' }), h('dd', { text: `${RETENTION[s.method] || 'AMQP 1 day, HTTP/2 7 days'} for unacknowledged messages` }));
    return h('section', { class: 'panel', 'aria-labelledby': 'conn-title' },
      h('h2', { id: 'conn-title', text: 'Connection details' }),
      h('p', { class: 'hint' }, 'Also accepted: the access-key form ', h('code', { text: 'authMode=aksign,signMethod=hmacsha256,timestamp=${ms},authId=AppKey,consumerGroupId=group' }),
        ' with password Base64(HMAC(AppSecret, "authId=AppKey&timestamp=${ms}")). Timestamps must be within 15 minutes.'),
      facts,
      (conn.samples || []).map((sm) => sampleBlock(sm, sm.channel === 'http2' ? h2 : amqp, p)),
      h('h3', { text: 'HTTP/2 (gRPC) from any client' }), codeSample('HTTP/2 metadata', grpc));
  }

  async function fillSync(p, panel, notice) {
    const pid = p.projectId;
    const all = await loadOrFail(() => Promise.all([api('GET', `${P(pid)}/sync`), request('GET', '/console/connection').catch(() => ({}))]));
    if (!all) return;
    const [s, conn] = all;
    const area = msgArea();
    if (notice) showOk(area, notice);
    const reload = async (text) => fillSync(p, panel, text);

    const status = h('section', { class: 'panel', 'aria-labelledby': 'sync-title' },
      h('header', {}, h('h2', { id: 'sync-title', text: 'Device Data Synchronization' }),
        h('span', { id: 'sync-status' }, badge(s.enabled ? 'Enabled' : 'Disabled', s.enabled ? 'ok' : ''))),
      h('p', { class: 'hint', text: 'Pushes device data (status, properties, events, lifecycle, control records) and user data (accounts, bindings) to your enterprise servers. Delivery is at-least-once: unacknowledged messages go to a retry queue and are pushed again.' }),
      h('dl', { class: 'facts' },
        h('dt', { text: 'Method' }), h('dd', { id: 'sync-method', text: s.method ? METHOD_LABEL[s.method] : (s.enabled ? 'Mixed' : '—') }),
        h('dt', { text: 'Device data' }), h('dd', { text: METHOD_LABEL[s.deviceData] || s.deviceData }),
        h('dt', { text: 'User data' }), h('dd', { text: METHOD_LABEL[s.userData] || s.userData }),
        conn.node ? [h('dt', { text: 'Served by node' }), h('dd', { id: 'sync-node' }, h('code', { text: conn.node }))] : null,
        s.legacyHttpUrl ? [h('dt', { text: 'Legacy push URL' }), h('dd', {}, h('code', { text: s.legacyHttpUrl }))] : null,
        s.legacyRetired ? [h('dt', { text: 'Legacy HTTP push' }), h('dd', { text: 'Disabled once: it can never be enabled again.' })] : null),
      syncExplanation(s));

    if (!s.enabled) {
      if (s.lastMethod) add(status, h('p', { class: 'hint', text: `Messages stacked before disabling are kept until their retention ends (${RETENTION[s.lastMethod]}) and are delivered if you enable again in time.` }));
      add(status, enableForm(pid, s, area, reload));
    } else {
      const actions = h('div', { class: 'actions' });
      if (s.method === 'http2') {
        const sw = h('button', { type: 'button', class: 'btn' }, 'Switch to AMQP (recommended)');
        sw.addEventListener('click', async () => {
          const ok = await confirmDialog('Switch to AMQP?', 'Consumers connected over HTTP/2 are disconnected; connect AMQP consumers to receive the backlog. Messages stay byte-for-byte the same.', 'Switch to AMQP');
          if (!ok) return;
          const r = await act(sw, area, () => api('POST', `${P(pid)}/sync/switch`, { method: 'amqp' }));
          if (r) await reload('Switched to AMQP.');
        });
        add(actions, sw);
      }
      const dis = h('button', { type: 'button', class: 'btn ghost danger' }, 'Disable');
      dis.addEventListener('click', async () => {
        const legacyWarn = s.userData === 'legacy_http' ? ' Legacy HTTP push cannot be enabled again afterwards.' : '';
        const ok = await confirmDialog('Disable data synchronization?',
          `No new sync messages are produced and connected consumers are disconnected. Messages already stacked are kept until their retention ends.${legacyWarn}`, 'Disable');
        if (!ok) return;
        const r = await act(dis, area, () => api('POST', `${P(pid)}/sync/disable`, {}));
        if (r) await reload('Data synchronization disabled.');
      });
      add(actions, dis);
      add(status, actions);
      if (s.userData === 'legacy_http') {
        const url = h('input', { type: 'url', 'data-field': 'url legacyHttpUrl', value: s.legacyHttpUrl || '', required: true });
        const ub = h('button', { type: 'submit', class: 'btn ghost' }, 'Save URL');
        const uf = h('form', { class: 'inline', novalidate: true, 'aria-label': 'Legacy push URL' }, field('Legacy HTTP push URL', url), ub);
        uf.addEventListener('submit', async (ev) => {
          ev.preventDefault();
          const r = await act(ub, area, () => api('PUT', `${P(pid)}/sync/legacy`, { url: url.value.trim() }), uf);
          if (r) await reload('Legacy push URL saved.');
        });
        add(status, uf);
      }
    }

    add(status, area);

    const prodArea = msgArea();
    const productRows = s.products.map((x) => {
      const input = h('input', { type: 'checkbox', role: 'switch', checked: x.enabled, disabled: !s.enabled, 'aria-describedby': 'products-hint' });
      const shown = h('span', { 'aria-hidden': 'true', text: x.enabled ? 'On' : 'Off' });
      input.addEventListener('change', async () => {
        const want = input.checked;
        const r = await act(input, prodArea, () => api('PUT', `${P(pid)}/sync/products/${enc(x.productKey)}`, { enabled: want }));
        x.enabled = r ? r.syncEnabled : !want;
        input.checked = x.enabled;
        shown.textContent = x.enabled ? 'On' : 'Off';
        if (r) announce(`Synchronization ${x.enabled ? 'on' : 'off'} for ${x.name}`);
      });
      return h('div', { class: 'switch-row', 'data-product': x.productKey },
        h('div', {}, h('strong', { text: x.name }), ' ', h('code', { class: 'muted', text: x.productKey })),
        h('label', { class: 'switch' }, input, h('span', { class: 'sr-only', text: `Synchronize ${x.name}` }), shown));
    });
    const products = h('section', { class: 'panel', 'aria-labelledby': 'sync-products-title' },
      h('h2', { id: 'sync-products-title', text: 'Products' }),
      h('p', { class: 'hint', id: 'products-hint', text: s.enabled
        ? 'Every product is synchronized when you enable, and products created later are too. Switch off the ones your servers do not need.'
        : 'Enable data synchronization to choose products: all of them are on when you enable.' }),
      prodArea,
      productRows.length ? productRows : h('p', { class: 'empty', text: 'This project has no products yet.' }));

    const groups = await consumerGroupsPanel(p, () => fillSync(p, panel));
    fill(panel, status, products, await backlogSettingsPanel(pid), groups, connectionDetails(p, conn, s));
  }

  /** Whether acknowledged messages stay stored until retention (what replay needs). */
  async function backlogSettingsPanel(pid) {
    const area = msgArea();
    let keep = null;
    try { keep = (await api('GET', `${P(pid)}/sync/backlog-settings`)).keepAcknowledged; } catch (e) { showError(area, e); }
    const input = h('input', { type: 'checkbox', role: 'switch', checked: keep === true, disabled: keep === null, 'aria-describedby': 'keep-hint' });
    const shown = h('span', { 'aria-hidden': 'true', text: keep ? 'On' : 'Off' });
    input.addEventListener('change', async () => {
      const want = input.checked;
      const r = await act(input, area, () => api('PUT', `${P(pid)}/sync/backlog-settings`, { keepAcknowledged: want }));
      const now = r ? r.keepAcknowledged : !want;
      input.checked = now;
      shown.textContent = now ? 'On' : 'Off';
      if (r) announce(`Acknowledged messages ${now ? 'are kept until retention ends' : 'are freed at once'}`);
    });
    return h('section', { class: 'panel', 'aria-labelledby': 'backlog-title', id: 'backlog-settings' },
      h('h2', { id: 'backlog-title', text: 'Backlog' }),
      h('div', { class: 'switch-row' },
        h('div', {}, h('strong', { text: 'Keep acknowledged messages' }),
          h('p', { class: 'hint', id: 'keep-hint', text: 'On: acknowledged messages stay stored until their retention ends, so a consumer group can be replayed from a time (Monitoring, Replay from) and traced. Off: their disk is freed as soon as every group has acknowledged them, and a replay brings back only messages still stored for another group.' })),
        h('label', { class: 'switch' }, input, h('span', { class: 'sr-only', text: 'Keep acknowledged messages' }), shown)),
      area);
  }

  // ---------------------------------------------------------------- Consumer groups

  const CLASS_LABEL = { device: 'Device data', user: 'User data' };

  function groupTakes(g) {
    const parts = [];
    if (g.dataClasses) parts.push(g.dataClasses.map((c) => CLASS_LABEL[c] || c).join(' + '));
    if (g.kinds) parts.push(g.kinds.join(', '));
    if (g.products) parts.push(`products ${g.products.join(', ')}`);
    return parts.length ? parts.join(' · ') : 'Everything';
  }

  /** Declared consumer groups: each collects what it takes from the moment it is declared. */
  async function consumerGroupsPanel(p, reload) {
    const pid = p.projectId;
    const area = msgArea();
    let groups = [];
    try { groups = await api('GET', `${P(pid)}/consumer-groups`); } catch (e) { showError(area, e); }
    const rows = table('Consumer groups', [
      { label: 'Name', cell: (g) => [h('code', { text: g.name }), g.default ? [' ', badge('default', 'ok')] : null, g.internal ? [' ', badge('internal', '')] : null] },
      { label: 'Takes', cell: (g) => groupTakes(g) },
      { label: 'Stacked', num: true, cell: (g) => String(g.stacked ?? 0) },
      { label: 'Consumers', num: true, cell: (g) => String(g.consumers) },
      { label: 'Actions', cell: (g) => {
        if (g.internal) return h('span', { class: 'muted', text: 'Managed by the platform' });
        const del = h('button', { type: 'button', class: 'btn ghost small danger', 'aria-label': `Delete consumer group ${g.name}` }, 'Delete');
        del.addEventListener('click', async () => {
          const ok = await confirmDialog(`Delete consumer group ${g.name}?`,
            'What the group has not acknowledged yet is dropped (counted in the figures). A consumer connecting with this name later declares it again, from then on.', 'Delete');
          if (!ok) return;
          const r = await act(del, area, () => api('DELETE', `${P(pid)}/consumer-groups/${enc(g.name)}`));
          if (r !== undefined) { await reload(); announce(`Consumer group ${g.name} deleted`); }
        });
        return del;
      } },
    ], groups.map((g) => Object.assign({}, g)), 'No consumer groups yet. The default group is declared when you enable data synchronization.');
    const name = h('input', { type: 'text', 'data-field': 'name', required: true, maxlength: 64, autocomplete: 'off' });
    const classes = h('select', { 'data-field': 'dataClasses dataClasses[0] dataClasses[1]' },
      h('option', { value: '', text: 'Device and user data' }),
      h('option', { value: 'device', text: 'Device data only' }),
      h('option', { value: 'user', text: 'User data only' }));
    const topics = h('textarea', { rows: 3, 'data-field': 'topics topics[0] topics[1] topics[2] topics[3] topics[4] topics[5] topics[6] topics[7]', placeholder: '/${pk}/${dn}/thing/event/property/post' });
    const products = h('input', { type: 'text', 'data-field': 'products products[0] products[1] products[2] products[3]', placeholder: 'a1product01, a1product02', autocomplete: 'off' });
    const btn = h('button', { type: 'submit', class: 'btn' }, 'Declare group');
    const form = h('form', { novalidate: true, 'aria-label': 'Declare a consumer group' },
      field('Group name', name, 'Letters, digits, - and _ (up to 64); names starting with _ are the platform\'s.'),
      field('Data', classes),
      field('Topics (optional)', topics, 'One per line: topic templates such as /${pk}/${dn}/thing/event/property/post, or message kinds such as device.status. Empty: every topic.'),
      field('Products (optional)', products, 'Comma-separated productKeys. Empty: every product.'),
      btn);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { name: name.value.trim() };
      if (classes.value) body.dataClasses = [classes.value];
      const t = topics.value.split('\n').map((x) => x.trim()).filter(Boolean);
      if (t.length) body.topics = t;
      const pr = products.value.split(',').map((x) => x.trim()).filter(Boolean);
      if (pr.length) body.products = pr;
      const r = await act(btn, area, () => api('POST', `${P(pid)}/consumer-groups`, body), form);
      if (r) { await reload(); announce(`Consumer group ${r.name} declared`); }
    });
    return h('section', { class: 'panel', 'aria-labelledby': 'groups-title', id: 'consumer-groups' },
      h('h2', { id: 'groups-title', text: 'Consumer groups' }),
      h('p', { class: 'hint', text: 'Each group receives every message it takes, from the moment it is declared, whether or not a consumer is connected; consumers of one group share its messages. A consumer connecting with a group name that is not declared declares it on that first connect (taking everything).' }),
      area, rows, form);
  }

  async function fillApiOperations(p, panel) {
    const pid = p.projectId;
    const groups = await loadOrFail(() => api('GET', `${P(pid)}/api-operations`));
    if (!groups) return;
    const area = msgArea();
    const render = (list) => {
      fill(panel, 
        h('p', { class: 'hint', text: 'The cloud API operations your enterprise servers can call, grouped by feature. A group must be activated for this project before its operations answer; calls to an inactive group get "service not activated" and change nothing.' }),
        area,
        ...list.map((g) => {
          const toggle = h('input', { type: 'checkbox', role: 'switch', checked: g.activated, 'aria-label': `${g.title} service activation` });
          toggle.addEventListener('change', async () => {
            const want = toggle.checked;
            const r = await act(toggle, area, () => api('PUT', `${P(pid)}/api-operations/${enc(g.group)}`, { activated: want }));
            if (r) {
              announce(`${g.title} ${want ? 'activated' : 'deactivated'}`);
              render(r);
              document.querySelector(`[data-group="${CSS.escape(g.group)}"] input[role=switch]`)?.focus();
            } else {
              toggle.checked = !want;
            }
          });
          return h('section', { class: 'panel', 'aria-labelledby': `grp-${g.group}`, 'data-group': g.group },
            h('header', {},
              h('div', {}, h('h2', { id: `grp-${g.group}`, text: g.title }), h('p', { class: 'hint', text: g.description })),
              h('div', { class: 'actions' },
                badge(g.activated ? 'Activated' : 'Not activated', g.activated ? 'ok' : ''),
                h('label', { class: 'switch' }, toggle, h('span', { 'aria-hidden': 'true', text: g.activated ? 'On' : 'Off' })))),
            table(`${g.title} operations`, [
              { label: 'Operation', cell: (o) => o.name },
              { label: 'Path', cell: (o) => h('code', { text: o.path }) },
              { label: 'Version', cell: (o) => o.version },
              { label: 'Description', cell: (o) => o.description },
            ], g.operations));
        }));
    };
    render(groups);
  }

  // ---------------------------------------------------------------- Monitoring

  function chart(title, series, cls, yLabel) {
    const W = 300, H = 70, pad = 4;
    const n = Math.max(...series.map((s) => s.values.length), 2);
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    const pt = (v, i) => `${(pad + (i * (W - 2 * pad)) / (n - 1)).toFixed(1)},${(H - pad - (v / max) * (H - 2 * pad)).toFixed(1)}`;
    const last = series.map((s) => `${s.name} ${yLabel(s.values[s.values.length - 1] ?? 0)}`).join(', ');
    return h('figure', { class: 'chart' },
      svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': `${title}: now ${last}; peak ${yLabel(max)}` },
        series.map((s) => {
          const pts = s.values.map(pt).join(' ');
          const nodes = [];
          if (s.area && s.values.length > 1) {
            nodes.push(svg('polygon', { class: `area-${s.cls}`, points: `${pt(0, 0)} ${pts} ${pt(0, s.values.length - 1)}` }));
          }
          if (s.values.length > 0) {
            nodes.push(svg('polyline', { class: `line-${s.cls}`, points: s.values.length > 1 ? pts : `${pt(s.values[0], 0)} ${pt(s.values[0], 1)}`, fill: 'none', 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
          }
          return nodes;
        })),
      h('figcaption', {}, h('span', { text: title }), series.map((s) => h('span', { class: `legend-${s.cls}`, text: `■ ${s.name}` })),
        h('span', { text: `max ${yLabel(max)}` })));
  }

  /** The thresholds that are set, as `stacked > 100` phrases. */
  function thresholdPhrases(t) {
    return [
      t && t.stackedMax != null ? `stacked > ${fmtNum(t.stackedMax)}` : null,
      t && t.oldestAgeMaxMs != null ? `oldest stacked > ${fmtAge(t.oldestAgeMaxMs)}` : null,
      t && t.deadLettersMax != null ? `dead letters > ${fmtNum(t.deadLettersMax)}` : null,
    ].filter(Boolean);
  }

  /** A group's alert state: red, with since when, while it is over a threshold. */
  function alertState(g) {
    const set = thresholdPhrases(g.thresholds);
    if (g.alerting) {
      return h('p', { class: 'alert-state alerting', 'data-alert': 'alerting' }, badge('Alerting', 'bad'),
        h('strong', { text: `Alerting since ${fmtTime(g.alertingSince)}` }),
        h('span', { text: `Over: ${set.join(' or ')}` }));
    }
    if (set.length) {
      return h('p', { class: 'alert-state', 'data-alert': 'ok' }, badge('OK', 'ok'), h('span', { text: `Alerts when ${set.join(' or ')}.` }));
    }
    return h('p', { class: 'alert-state hint', 'data-alert': 'none', text: 'No alert thresholds: this group never alerts.' });
  }

  /** The form that sets a group's three thresholds (PUT …/alerts); empty: not set. */
  function alertForm(pid, g, saved) {
    const area = msgArea();
    const t = g.thresholds || {};
    const num = (dataField, value, step) => h('input', {
      type: 'number', min: '0', step, inputmode: 'decimal', 'data-field': dataField,
      value: value == null ? '' : String(value), placeholder: 'not set',
    });
    const stacked = num('stackedMax', t.stackedMax, '1');
    const age = num('oldestAgeMaxMs', t.oldestAgeMaxMs == null ? null : t.oldestAgeMaxMs / 1000, 'any');
    const dead = num('deadLettersMax', t.deadLettersMax, '1');
    const btn = h('button', { type: 'submit', class: 'btn small' }, 'Save thresholds');
    const form = h('form', { class: 'inline alert-form', novalidate: true, 'aria-label': `Alert thresholds of ${g.group}` },
      field('Stacked messages above', stacked),
      field('Oldest stacked older than (s)', age),
      field('Dead letters above', dead),
      btn);
    // An empty box is "not set"; anything else goes to the API as typed, which answers
    // for what it refuses (the field is marked).
    const value = (input, scale) => {
      const v = input.value.trim();
      if (v === '') return input.validity && input.validity.badInput ? input.value : null;
      return scale ? Math.round(Number(v) * scale) : Number(v);
    };
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { stackedMax: value(stacked), oldestAgeMaxMs: value(age, 1000), deadLettersMax: value(dead) };
      const r = await act(btn, area, () => api('PUT', `${P(pid)}/consumer-groups/${enc(g.group)}/alerts`, body), form);
      if (r) {
        const set = thresholdPhrases(r);
        showOk(area, set.length ? `Saved: ${g.group} alerts when ${set.join(' or ')}.` : `Saved: ${g.group} has no alert thresholds.`);
        announce(`Alert thresholds of ${g.group} saved`);
        saved();
      }
    });
    return h('details', { class: 'alert-settings' }, h('summary', { text: 'Alert thresholds' }),
      h('p', { class: 'hint', text: 'The group alerts (red here, iotsync_group_alerting on /metrics, the operator webhook if configured) while any threshold set is exceeded. Leave a box empty to not use it.' }),
      form, area);
  }

  /** Ms since the epoch of a datetime-local value (the browser's local time); null if empty. */
  function localMs(value) {
    if (!value) return null;
    const t = new Date(value).getTime();
    return Number.isFinite(t) ? t : null;
  }

  /** A time picked in a datetime-local box, or a field error shown like the API's. */
  function pickedTime(input, label, required) {
    const ms = localMs(input.value);
    if (ms !== null) return { ms };
    if (input.value === '' && !(input.validity && input.validity.badInput) && !required) return { ms: null };
    return { error: { body: { message: `${label}: choose a complete date and time.`, field: input.dataset.field } } };
  }

  /**
   * Replay from a time (POST …/seek) and purge (POST …/purge) on one group's card;
   * `c.g` is the group's latest figures, so the purge confirms the count shown now.
   */
  function backlogActions(pid, c, saved) {
    const name = c.g.group;
    const area = msgArea();
    const hintId = `seek-hint-${name}`;
    const from = h('input', { type: 'datetime-local', step: '1', 'data-field': 'from', required: true, 'aria-describedby': hintId });
    const replay = h('button', { type: 'submit', class: 'btn small' }, 'Replay');
    const form = h('form', { class: 'inline seek-form', novalidate: true, 'aria-label': `Replay ${name} from a time` },
      field('Replay from', from), replay);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const t = pickedTime(from, 'Replay from', true);
      if (t.error) { clearMsg(area, form); showError(area, t.error, form); return; }
      const r = await act(replay, area, () => api('POST', `${P(pid)}/consumer-groups/${enc(name)}/seek`, { from: t.ms }), form);
      if (r) {
        const at = fmtTime(r.from || t.ms);
        showOk(area, `Replayed from ${at}: ${fmtNum(r.replayed)} replayed, ${fmtNum(r.dropped)} dropped (owed from before)`
          + `${r.inFlight ? `, ${fmtNum(r.inFlight)} in-flight deliveries settled` : ''}. ${name} owes ${fmtNum(r.owed)} now.`);
        announce(`${name} replayed from ${at}`);
        saved();
      }
    });
    const purge = h('button', { type: 'button', class: 'btn small ghost danger', 'aria-label': `Purge ${name}` }, 'Purge…');
    purge.addEventListener('click', async () => {
      const n = c.g.stacked || 0;
      const ok = await confirmDialog(`Drop the ${fmtNum(n)} message${n === 1 ? '' : 's'} group ${name} still owes?`,
        'They are never delivered to this group (counted as dropped); deliveries in flight are settled as dropped and their late acknowledgements ignored. Dead letters stay, and other groups are not affected.',
        'Purge');
      if (!ok) return;
      const r = await act(purge, area, () => api('POST', `${P(pid)}/consumer-groups/${enc(name)}/purge`, { expectedStacked: n }));
      // Done or refused (the count changed), the figures shown are old now.
      saved();
      if (r) {
        const held = r.inFlight ? ` (${fmtNum(r.inFlight)} ${r.inFlight === 1 ? 'was' : 'were'} in flight)` : '';
        showOk(area, `Purged ${name}: ${fmtNum(r.dropped)} dropped${held}. It owes ${fmtNum(r.owed)} now.`);
        announce(`${name} purged`);
      }
    });
    c.purge = purge;
    return h('div', { class: 'backlog-actions' }, form,
      h('p', { class: 'hint', id: hintId, text: 'Local time. The group receives again every stored message it takes produced since then, acknowledged or not, in order per device; what it owes from before is dropped.' }),
      h('div', { class: 'purge-row' }, purge, h('span', { class: 'hint', text: 'Clears the group\'s backlog, as when the system behind it was rebuilt.' })),
      area);
  }

  /** A group's card: made once (its forms keep what is typed), its figures refreshed. */
  function groupCard(pid, g, appKey, saved) {
    const slot = h('div');
    const figures = h('div');
    const c = { slot, figures, g };
    c.card = h('section', { class: 'panel group-card', 'data-group': g.group, 'aria-labelledby': `g-${g.group}` },
      h('header', {}, h('h3', { id: `g-${g.group}` }, 'Consumer group ', h('code', { text: g.group }), g.group === appKey ? [' ', badge('default')] : null)),
      slot, figures, backlogActions(pid, c, saved), alertForm(pid, g, saved));
    return c;
  }

  function updateGroupCard(c, pid, g) {
    c.g = g;
    // Nothing owed, nothing to purge (dead letters stay either way).
    c.purge.disabled = !g.stacked;
    c.card.classList.toggle('alerting', !!g.alerting);
    c.card.dataset.alert = g.alerting ? 'alerting' : 'ok';
    const sig = JSON.stringify([g.alerting, g.alertingSince, g.thresholds]);
    if (sig !== c.alertSig) {
      c.alertSig = sig;
      fill(c.slot, alertState(g));
    }
    const key = `${pid}/${g.group}`;
    const hist = state.history.get(key) || [];
    const m = (label, value, metric) => h('div', {}, h('dt', { text: label }), h('dd', { 'data-metric': metric, text: value }));
    fill(c.figures,
      h('dl', { class: 'metrics' },
        m('Stacked messages', fmtNum(g.stacked), 'stacked'),
        m('Oldest stacked', fmtAge(g.oldestStackedAgeMs), 'oldest'),
        m('Push / s', fmtRate(g.pushPerSec), 'push'),
        m('Ack / s', fmtRate(g.ackPerSec), 'ack'),
        m('Consumers', fmtNum(g.consumers), 'consumers'),
        m('Dead letters', fmtNum(g.deadLetters), 'dead'),
        m('In flight', fmtNum(g.inFlight), 'inflight'),
        m('Waiting for retry', fmtNum(g.retryWaiting), 'retry'),
        m('Redelivered (total)', fmtNum(g.redeliveredTotal), 'redelivered'),
        m('Expired (total)', fmtNum(g.expiredTotal), 'expired'),
        m('Replayed (total)', fmtNum(g.replayedTotal), 'replayed'),
        m('Dropped (total)', fmtNum(g.droppedTotal), 'dropped')),
      h('div', { class: 'charts' },
        chart('Stacked messages', [{ name: 'stacked', cls: 'stacked', area: true, values: hist.map((x) => x.stacked) }], 'stacked', (v) => fmtNum(v)),
        chart('Messages per second', [
          { name: 'push', cls: 'push', values: hist.map((x) => x.push) },
          { name: 'ack', cls: 'ack', values: hist.map((x) => x.ack) },
        ], 'rates', (v) => fmtRate(v))));
  }

  /** The keys an audit entry changed, as `key: before → after` lines. */
  function auditChange(before, after) {
    const show = (v) => (v === undefined ? '—' : JSON.stringify(v));
    const isObj = (v) => v && typeof v === 'object' && !Array.isArray(v);
    if (!isObj(before) || !isObj(after)) {
      return h('pre', { class: 'json', text: `${before === null ? '—' : show(before)} → ${after === null ? '—' : show(after)}` });
    }
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])]
      .filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]));
    const same = Object.keys(after).filter((k) => !keys.includes(k) && (k === 'group' || k === 'productKey' || k === 'name'));
    return h('ul', { class: 'props' },
      same.map((k) => h('li', {}, h('span', { class: 'muted', text: `${k}: ` }), h('code', { text: show(after[k]) }))),
      keys.map((k) => h('li', {}, h('span', { class: 'muted', text: `${k}: ` }), h('code', { text: show(before[k]) }), ' → ', h('code', { text: show(after[k]) }))));
  }

  // ---------------------------------------------------------------- Message search

  const STATE_LABEL = {
    stacked: 'Stacked', inFlight: 'In flight', retryWaiting: 'Waiting for retry', deadLettered: 'Dead letter',
    acknowledged: 'Acknowledged', dropped: 'Dropped', expired: 'Expired',
  };
  const STATE_KIND = { stacked: 'warn', retryWaiting: 'warn', deadLettered: 'bad', expired: 'bad', acknowledged: 'ok' };

  /** What else is known of a message's state in one group: attempts, to whom, when. */
  function stateDetail(s) {
    const parts = [`${fmtNum(s.attempts)} attempt${s.attempts === 1 ? '' : 's'}`];
    if (s.state === 'inFlight') {
      parts.push(s.consumer ? `to ${s.consumer.remote} (${s.consumer.clientId})` : 'to a consumer no longer connected');
      if (s.ackDeadline) parts.push(`ack due by ${fmtTime(s.ackDeadline)}`);
    }
    if (s.nextDeliveryAt) parts.push(`delivered again at ${fmtTime(s.nextDeliveryAt)}`);
    if (s.deadLetteredAt) parts.push(`dead letter since ${fmtTime(s.deadLetteredAt)}`);
    if (s.acknowledgedAt) parts.push(`acknowledged at ${fmtTime(s.acknowledgedAt)}`);
    if (s.state === 'dropped') parts.push('by a purge or a replay');
    return parts.join(' · ');
  }

  function groupStates(m) {
    if (!m.groups.length) return h('span', { class: 'muted', text: 'No group takes it.' });
    return h('ul', { class: 'states' }, m.groups.map((s) => h('li', { 'data-group': s.group, 'data-state': s.state },
      h('code', { text: s.group }), ' ', badge(STATE_LABEL[s.state] || s.state, STATE_KIND[s.state]),
      h('span', { class: 'muted', text: ` ${stateDetail(s)}` }))));
  }

  // Said by the topic already; left out of a payload's one-line summary.
  const DEVICE_KEYS = new Set(['deviceType', 'iotId', 'productKey', 'deviceName', 'gmtCreate']);

  /** What a payload says, on one line: a property post's items as `name = value`. */
  function payloadLine(p) {
    if (!p || typeof p !== 'object' || Array.isArray(p)) return JSON.stringify(p);
    if (p.items && typeof p.items === 'object' && !Array.isArray(p.items)) {
      return Object.entries(p.items)
        .map(([k, v]) => `${k} = ${JSON.stringify(v && typeof v === 'object' && 'value' in v ? v.value : v)}`).join(', ');
    }
    return JSON.stringify(Object.fromEntries(Object.entries(p).filter(([k]) => !DEVICE_KEYS.has(k))));
  }

  /** One line of the payload, the whole of it on demand. */
  function payloadSummary(p) {
    if (p === null || p === undefined) return h('span', { class: 'muted', text: 'not JSON' });
    const one = payloadLine(p);
    const short = one.length > 72 ? `${one.slice(0, 71)}…` : one;
    return h('details', { class: 'payload' }, h('summary', {}, h('code', { class: 'wrap-anywhere', text: short })),
      h('pre', { class: 'json', text: JSON.stringify(p, null, 2) }));
  }

  function messagesTable(list, empty) {
    const t = table('Messages', [
      { label: 'Message', cell: (m) => h('div', {}, h('code', { class: 'wrap-anywhere', text: m.messageId }),
        h('div', { class: 'muted small', text: `${m.kind} · seq ${m.seq}` }), m.expired ? badge('Past retention', 'bad') : null) },
      { label: 'Topic', cell: (m) => h('code', { class: 'wrap-anywhere', text: m.topic }) },
      { label: 'Generated', cell: (m) => fmtTime(m.generateTime) },
      { label: 'Payload', cell: (m) => payloadSummary(m.payload) },
      { label: 'Per group', cell: (m) => groupStates(m) },
    ], list, empty);
    const el = t.querySelector('table');
    if (el) el.id = 'messages-table';
    return t;
  }

  /**
   * Finds a message by id (GET …/messages/{id}) or lists a device's messages in a time
   * range, newest first, paged with "Older" on nextBeforeSeq (GET …/messages?…).
   */
  function messageSearch(pid) {
    const area = msgArea();
    const results = h('div', { id: 'message-results' });
    const text = (dataField, attrs) => h('input', { type: 'text', 'data-field': dataField, autocomplete: 'off', spellcheck: 'false', ...attrs });

    const mid = h('input', { type: 'search', 'data-field': 'messageId', autocomplete: 'off', spellcheck: 'false', required: true });
    const idBtn = h('button', { type: 'submit', class: 'btn' }, 'Find message');
    const idForm = h('form', { class: 'inline', role: 'search', novalidate: true, 'aria-label': 'Find a message by ID' },
      field('Message ID', mid), idBtn);

    const iot = text('iotId');
    const pk = text('productKey');
    const dn = text('deviceName');
    const from = h('input', { type: 'datetime-local', step: '1', 'data-field': 'from' });
    const to = h('input', { type: 'datetime-local', step: '1', 'data-field': 'to' });
    const limit = h('select', { 'data-field': 'limit' }, [5, 20, 50, 200].map((n) => h('option', { value: String(n), text: String(n), selected: n === 20 })));
    const devBtn = h('button', { type: 'submit', class: 'btn' }, 'Search device');
    const devForm = h('form', { class: 'device-search', role: 'search', novalidate: true, 'aria-label': "Search a device's messages" },
      h('div', { class: 'row' }, field('iotId', iot), h('span', { class: 'or', text: 'or' }), field('ProductKey', pk), field('Device name', dn)),
      h('div', { class: 'row' }, field('From (optional)', from), field('To (optional)', to), field('Per page', limit), devBtn));

    // Runs a look-up: a 404 is an answer ("not found", in the results), other errors go
    // to the message area with the form's field marked.
    async function run(button, form, fn) {
      clearMsg(area, form);
      button.disabled = true;
      try {
        return await fn();
      } catch (e) {
        if (e.status === 404) {
          fill(results, h('p', { class: 'empty not-found', 'data-result': 'not-found', text: `Not found: ${e.body.message}` }));
        } else {
          fill(results);
          showError(area, e, form);
        }
        return undefined;
      } finally {
        if (button.isConnected) button.disabled = false;
      }
    }

    idForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const id = mid.value.trim();
      if (!id) { clearMsg(area, idForm); showError(area, { body: { message: 'Type the message ID to look up.', field: 'messageId' } }, idForm); return; }
      const m = await run(idBtn, idForm, () => api('GET', `${P(pid)}/messages/${enc(id)}`));
      if (m) {
        fill(results, h('p', { class: 'hint', 'data-result': 'message', text: `Message ${m.messageId}: its state in every group that takes it.` }), messagesTable([m]));
        announce(`Message ${m.messageId} found`);
      }
    });

    // The device query of the last search and the pages seen: [undefined, seq, seq…],
    // the last one shown; a page that fails to load leaves them as they were.
    let query = null;
    let pages = [];
    async function showPage(button, want) {
      const q = new URLSearchParams(query);
      const before = want[want.length - 1];
      if (before !== undefined) q.set('beforeSeq', String(before));
      const r = await run(button, devForm, () => api('GET', `${P(pid)}/messages?${q}`));
      if (!r) return;
      pages = want;
      const older = h('button', { type: 'button', class: 'btn small ghost', disabled: r.nextBeforeSeq === undefined }, 'Older');
      const newer = h('button', { type: 'button', class: 'btn small ghost', disabled: pages.length <= 1 }, 'Newer');
      older.addEventListener('click', () => showPage(older, [...pages, r.nextBeforeSeq]));
      newer.addEventListener('click', () => showPage(newer, pages.slice(0, -1)));
      const n = r.messages.length;
      fill(results,
        h('p', { class: 'hint', 'data-result': 'device', text: `${fmtNum(n)} message${n === 1 ? '' : 's'}, newest first · page ${pages.length}` }),
        messagesTable(r.messages, pages.length > 1 ? 'No older messages.' : 'No stored message of this device in that time range.'),
        h('div', { class: 'pager' }, newer, older));
      announce(`${n} messages listed`);
    }

    devForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const q = new URLSearchParams();
      if (iot.value.trim()) q.set('iotId', iot.value.trim());
      if (pk.value.trim()) q.set('productKey', pk.value.trim());
      if (dn.value.trim()) q.set('deviceName', dn.value.trim());
      const f = pickedTime(from, 'From', false);
      const t = pickedTime(to, 'To', false);
      const bad = f.error || t.error;
      if (bad) { clearMsg(area, devForm); showError(area, bad, devForm); return; }
      if (f.ms !== null) q.set('from', String(f.ms));
      // The box shows whole seconds: "to" takes in all of its second.
      if (t.ms !== null) q.set('to', String(t.ms + 999));
      q.set('limit', limit.value);
      query = q.toString();
      await showPage(devBtn, [undefined]);
    });

    return h('section', { class: 'panel', 'aria-labelledby': 'search-title', id: 'message-search' },
      h('h2', { id: 'search-title', text: 'Find messages' }),
      h('p', { class: 'hint', text: 'Trace a message an enterprise server says it never got: by its ID, or by device (iotId, or ProductKey and device name) and time range (local time). Each result shows its state in every consumer group that takes it.' }),
      idForm, devForm, area, results);
  }

  async function renderMonitoring(pid) {
    const p = await loadOrFail(() => project(pid));
    if (!p) return;
    const statusLine = h('p', { class: 'hint', id: 'monitor-status', text: 'Loading…' });
    const groupsEl = h('div', { id: 'groups' });
    const consumersEl = h('div');
    const deadArea = msgArea();
    const deadEl = h('div');
    const auditEl = h('div');
    const auditPage = { no: 1 };
    const pause = h('button', { type: 'button', class: 'btn ghost small', 'aria-pressed': 'false' }, 'Pause live updates');
    let paused = false;
    pause.addEventListener('click', () => {
      paused = !paused;
      pause.setAttribute('aria-pressed', String(paused));
      pause.textContent = paused ? 'Resume live updates' : 'Pause live updates';
    });
    const last = { consumers: '', dead: '', audit: '', groups: null };
    const cards = new Map(); // group -> its card, made once

    const renderDead = (list) => {
      const sig = JSON.stringify(list);
      if (sig === last.dead) return;
      last.dead = sig;
      fill(deadEl, table('Dead letters', [
        { label: 'Message', cell: (d) => h('code', { class: 'wrap-anywhere', text: d.messageId }) },
        { label: 'Group', cell: (d) => h('code', { text: d.group }) },
        { label: 'Topic', cell: (d) => h('code', { class: 'wrap-anywhere', text: d.topic }) },
        { label: 'Attempts', num: true, cell: (d) => fmtNum(d.attempts) },
        { label: 'Dead since', cell: (d) => fmtTime(d.deadAt) },
        { label: 'Payload', cell: (d) => h('details', {}, h('summary', { text: 'Show' }), h('pre', { class: 'json', text: JSON.stringify(d.payload, null, 2) })) },
        { label: 'Actions', cell: (d) => {
          const retry = h('button', { type: 'button', class: 'btn small', 'aria-label': `Retry ${d.messageId}` }, 'Retry');
          const drop = h('button', { type: 'button', class: 'btn small ghost danger', 'aria-label': `Drop ${d.messageId}` }, 'Drop');
          retry.addEventListener('click', async () => {
            const r = await act(retry, deadArea, () => api('POST', `${P(pid)}/sync/dead-letters/${enc(d.messageId)}/retry`, {}));
            if (r) { showOk(deadArea, `Message ${d.messageId} is queued for delivery again.`); tick(); }
          });
          drop.addEventListener('click', async () => {
            const ok = await confirmDialog('Drop this message?', `Message ${d.messageId} (${d.topic}) is deleted for good and never delivered.`, 'Drop');
            if (!ok) return;
            const r = await act(drop, deadArea, async () => { await api('DELETE', `${P(pid)}/sync/dead-letters/${enc(d.messageId)}`); return true; });
            if (r) { showOk(deadArea, `Message ${d.messageId} dropped.`); tick(); }
          });
          return h('div', { class: 'actions' }, retry, drop);
        } },
      ], list, 'No dead letters. A consumer that rejects a message moves it here.'));
    };

    const renderAudit = (page) => {
      const sig = JSON.stringify(page);
      if (sig === last.audit) return;
      last.audit = sig;
      const pages = Math.max(1, Math.ceil(page.total / page.pageSize));
      fill(auditEl, 
        table('Audit log', [
          { label: 'When', cell: (a) => fmtTime(a.at) },
          { label: 'Who', cell: (a) => a.actor },
          { label: 'Action', cell: (a) => h('code', { text: a.action }) },
          { label: 'Change', cell: (a) => auditChange(a.before, a.after) },
        ], page.items, 'No changes recorded yet.'),
        h('div', { class: 'pager' },
          h('button', { type: 'button', class: 'btn small ghost', disabled: auditPage.no <= 1, onclick: () => { auditPage.no -= 1; tick(); } }, 'Newer'),
          h('span', { text: `Page ${auditPage.no} of ${pages}` }),
          h('button', { type: 'button', class: 'btn small ghost', disabled: auditPage.no >= pages, onclick: () => { auditPage.no += 1; tick(); } }, 'Older')));
    };

    let busy = false;
    async function tick(fromTimer) {
      if (busy || (fromTimer && (paused || document.hidden))) return;
      busy = true;
      try {
        const [stats, consumers, dead, audit] = await Promise.all([
          api('GET', `${P(pid)}/sync/stats`),
          api('GET', `${P(pid)}/sync/consumers`),
          api('GET', `${P(pid)}/sync/dead-letters?limit=50`),
          api('GET', `${P(pid)}/audit?pageSize=15&pageNo=${auditPage.no}`),
        ]);
        const now = Date.now();
        for (const g of stats.groups) {
          const key = `${pid}/${g.group}`;
          const hist = state.history.get(key) || [];
          hist.push({ t: now, stacked: g.stacked, push: g.pushPerSec, ack: g.ackPerSec });
          while (hist.length > HISTORY) hist.shift();
          state.history.set(key, hist);
        }
        statusLine.textContent = `${stats.paused ? 'Data synchronization is off: nothing is delivered, stacked messages stay until their retention ends.' : 'Live'} · retention ${fmtAge(stats.retentionMs)} · ${fmtNum(stats.storedMessages)} messages stored · updated ${new Date(now).toLocaleTimeString()}`;
        const names = stats.groups.map((g) => g.group);
        for (const name of [...cards.keys()]) if (!names.includes(name)) cards.delete(name);
        for (const g of stats.groups) {
          if (!cards.has(g.group)) cards.set(g.group, groupCard(pid, g, p.appKey, () => tick()));
          updateGroupCard(cards.get(g.group), pid, g);
        }
        // The cards are put in place only when the groups change, so a form being typed
        // in keeps its focus.
        const order = JSON.stringify(names);
        if (order !== last.groups) {
          last.groups = order;
          fill(groupsEl, ...(names.length
            ? names.map((n) => cards.get(n).card)
            : [h('p', { class: 'empty', text: 'No consumer groups yet: enable data synchronization to start the backlog.' })]));
        }
        const csig = JSON.stringify(consumers);
        if (csig !== last.consumers) {
          last.consumers = csig;
          fill(consumersEl, table('Connected consumers', [
            { label: 'Consumer', cell: (c) => h('code', { text: String(c.consumerId) }) },
            { label: 'Group', cell: (c) => h('code', { text: c.group }) },
            { label: 'Channel', cell: (c) => String(c.channel).toUpperCase() },
            { label: 'Client ID', cell: (c) => c.clientId },
            { label: 'Remote', cell: (c) => c.remote },
            { label: 'Connected since', cell: (c) => fmtTime(c.connectedAt) },
          ], consumers, 'No consumer is connected.'));
        }
        renderDead(dead);
        renderAudit(audit);
      } catch (e) {
        if (e.status !== 401) statusLine.textContent = `Could not refresh: ${e.message}`;
      } finally {
        busy = false;
      }
    }

    setPage(`Monitoring · ${p.name}`, projectHead(p, 'monitoring'),
      h('div', { class: 'actions' }, statusLine, pause),
      h('section', { 'aria-labelledby': 'groups-title' }, h('h2', { id: 'groups-title', text: 'Backlog per consumer group' }), groupsEl),
      messageSearch(pid),
      h('section', { class: 'panel', 'aria-labelledby': 'consumers-title' }, h('h2', { id: 'consumers-title', text: 'Connected consumers' }), consumersEl),
      h('section', { class: 'panel', 'aria-labelledby': 'dead-title' }, h('h2', { id: 'dead-title', text: 'Dead letters' }), deadArea, deadEl),
      h('section', { class: 'panel', 'aria-labelledby': 'audit-title' }, h('h2', { id: 'audit-title', text: 'Audit log' }),
        h('p', { class: 'hint', text: 'Every change of this project: who, when, before and after. Newest first.' }), auditEl));
    await tick();
    state.timers.push(setInterval(() => tick(true), POLL_MS));
  }

  // ---------------------------------------------------------------- start

  document.getElementById('sign-out').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);

  (async () => {
    try {
      const s = await request('GET', '/console/session');
      state.csrf = s.csrfToken;
      startApp();
    } catch (_) {
      showSignIn();
    }
  })();
})();
