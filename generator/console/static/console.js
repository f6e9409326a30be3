// medport console: reload while messages are pending (so a replayed message turns green by itself);
// the choice is kept per browser. Nothing else: pages are rendered by the server.
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
  if (seconds > 0) {
    setTimeout(function () { if (!box || box.checked) { window.location.reload(); } }, seconds * 1000);
  }
  document.querySelectorAll('form.replay').forEach(function (form) {
    form.addEventListener('submit', function () {
      var b = form.querySelector('button');
      if (b) { b.disabled = true; b.textContent = 'Replaying…'; }
    });
  });
})();
