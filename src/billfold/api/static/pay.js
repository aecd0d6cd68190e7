(function () {
  var el = document.getElementById("countdown");
  var end = Date.parse(el.dataset.expires);
  function tick() {
    var s = Math.max(0, Math.floor((end - Date.now()) / 1000));
    var m = Math.floor(s / 60), r = s % 60;
    el.textContent = s > 0 ? m + " min " + (r < 10 ? "0" : "") + r + " s" : "now: reload the page";
    if (s > 0) setTimeout(tick, 1000);
  }
  tick();
  document.getElementById("pay-form").addEventListener("submit", function () {
    var b = document.getElementById("pay-button"); b.disabled = true; b.textContent = "Processing…";
  });
})();
