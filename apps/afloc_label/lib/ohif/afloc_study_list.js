/*
 * Double-click on a study in OHIF's study list opens it in the AFLoc (X-ray) mode.
 *
 * lib/ohif_static.py appends this file (after ohif_afloc_mode.js) to the bundle's app-config.js.
 * It registers a small OHIF extension ("afloc-label-study-list") whose preRegistration hook
 * receives the viewer's extension manager and configuration; nothing else of the viewer is used.
 *
 * Why a DOM listener: the study list of the bundled OHIF (3.10.0-beta.5, WorkList) offers no
 * extension point or customization for a row click: a click only expands the row, where one
 * button per mode opens the study. To make "open" one user action, one listener on `document`
 * (capture phase) handles `dblclick` on a study's summary row only, which the study list marks
 * `<tr data-cy="studyRow-UID">` around `<tr data-cy="UID">`. Everything else is left as it is:
 * single clicks still expand and collapse rows, the expanded row's mode buttons still work, a
 * double-click anywhere else (the expanded series table, the viewer) does nothing new.
 *
 * What a double-click does: reads the study's modalities from the viewer's own data source
 * (QIDO-RS, as the study list does), asks the AFLoc mode's isValidMode (the check that enables
 * its button), and only for a study the mode accepts (CR, DX and other 2D modalities) opens
 * `<routerBasename><mode route>?StudyInstanceUIDs=<uid>`, the same URL as the mode's button.
 * A CT/MR study is left alone (the two clicks expanded and collapsed it, as before).
 *
 * Navigation stays inside the page: the URL is pushed onto the browser history and a
 * `popstate` event tells the viewer's router, as the Back and Forward buttons do. Should the
 * study list still be on screen 3 s later, the page loads that URL instead.
 *
 * Test hook: window.__aflocStudyList (studyRowUid, open, lastOpen).
 */
(function () {
  'use strict';

  var EXTENSION_ID = 'afloc-label-study-list';
  var MODE_ID = 'afloc-label-xray';
  var FALLBACK_MS = 3000;
  var UID = /^[0-9]+(\.[0-9]+)*$/;

  var context = { extensionManager: null, appConfig: null };
  var hook = { lastOpen: null };

  /** The StudyInstanceUID of the study whose summary row holds `target`, or null. */
  function studyRowUid(target) {
    var row = target && target.closest ? target.closest('tr[data-cy]') : null;
    if (!row) return null;
    var uid = row.getAttribute('data-cy');
    if (!UID.test(uid || '')) return null;
    var outer = row.parentElement ? row.parentElement.closest('tr[data-cy]') : null;
    if (!outer || outer.getAttribute('data-cy') !== 'studyRow-' + uid) return null;
    return uid;
  }

  function aflocMode() {
    var modes = (context.appConfig && context.appConfig.loadedModes) || [];
    for (var i = 0; i < modes.length; i++) if (modes[i] && modes[i].id === MODE_ID) return modes[i];
    return null;
  }

  async function studyModalities(uid) {
    var dataSource = context.extensionManager.getActiveDataSource()[0];
    var studies = await dataSource.query.studies.search({ studyInstanceUid: uid });
    var study = (studies || []).filter(function (s) { return s.studyInstanceUid === uid; })[0] || (studies || [])[0];
    if (!study) return null;
    return { study: study, modalities: String(study.modalities || '').replace(/\//g, '\\') };
  }

  function navigate(path) {
    var base = String((context.appConfig && context.appConfig.routerBasename) || '/');
    if (base.slice(-1) !== '/') base += '/';
    var url = base + path;
    var previous = window.history.state;
    var index = previous && typeof previous.idx === 'number' ? previous.idx + 1 : 0;
    window.history.pushState({ usr: null, key: Math.random().toString(36).slice(2, 10), idx: index }, '', url);
    window.dispatchEvent(new PopStateEvent('popstate', { state: window.history.state }));
    setTimeout(function () {
      if (document.querySelector('tr[data-cy^="studyRow-"]') && window.location.pathname + window.location.search === url) {
        window.location.assign(url);
      }
    }, FALLBACK_MS);
    return url;
  }

  /** Open study `uid` in the AFLoc mode when the mode accepts it; resolves to the URL or null. */
  async function open(uid) {
    var mode = aflocMode();
    if (!mode || !context.extensionManager) return null;
    var found = await studyModalities(uid);
    if (!found) return null;
    var verdict = mode.isValidMode({ modalities: found.modalities, study: found.study }) || {};
    hook.lastOpen = { uid: uid, modalities: found.modalities, valid: !!verdict.valid };
    if (!verdict.valid) return null;
    var url = navigate(mode.routeName + '?StudyInstanceUIDs=' + encodeURIComponent(uid));
    hook.lastOpen.url = url;
    return url;
  }

  function onDoubleClick(event) {
    var uid = studyRowUid(event.target);
    if (!uid) return;
    open(uid).catch(function (error) {
      hook.lastOpen = { uid: uid, error: String((error && error.message) || error) };
      console.warn('AFLoc: could not open the study in the AFLoc mode:', error);
    });
  }

  var extension = {
    id: EXTENSION_ID,
    version: '1.0.0',
    preRegistration: function (options) {
      context.extensionManager = options.extensionManager;
      context.appConfig = options.appConfig;
      if (!window.__aflocStudyListInstalled) {
        document.addEventListener('dblclick', onDoubleClick, true);
        window.__aflocStudyListInstalled = true;
      }
    },
  };

  window.__aflocStudyList = {
    studyRowUid: studyRowUid,
    open: open,
    get lastOpen() { return hook.lastOpen; },
    _context: context,
  };

  window.config = window.config || {};
  window.config.extensions = (window.config.extensions || []).concat([extension]);
})();
