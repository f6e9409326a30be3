// medport console: reload while messages are being processed (so a replayed message turns green by itself), only
// while the tab is visible; the choice is kept per browser. Nothing else: pages are rendered by the server.
(function () {
  var box = document.getElementById('auto-refresh');
  var stored = window.localStorage ? localStorage.getItem('medport-auto-refresh') : null;
  if (box && stored !== null) { box.checked = stored === '1'; }
  if (box) {
    box.addEventListener('change', function () {
      if (window.localStorage) { localStorage.setItem('medport-auto-refresh', box.checked ? '1' : '0'); }
    });
  }
  var seconds = Number(document.body.getAttribute('data-refresh') || 0);
  function tick() {
    if (document.hidden) { setTimeout(tick, seconds * 1000); return; }
    if (!box || box.checked) { window.location.reload(); }
  }
  if (seconds > 0) { setTimeout(tick, seconds * 1000); }
  document.querySelectorAll('form.act').forEach(function (form) {
    form.addEventListener('submit', function () {
      var b = form.querySelector('button');
      if (b) { b.disabled = true; b.textContent = 'Sending…'; }
    });
  });
})();
