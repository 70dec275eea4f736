// The theme before the first paint, so a reload never flashes the wrong one; the
// signed-in user's saved choice is applied once their account has loaded.
try {
  var t = localStorage.getItem("inflab.theme");
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
} catch (e) {}
