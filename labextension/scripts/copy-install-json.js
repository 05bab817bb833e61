// Ships install.json next to the built extension so JupyterLab's extension manager
// knows it came with the pai-lab Python package (pip uninstall removes it).
const fs = require('fs');
const path = require('path');
const pkg = require('../package.json');
const out = path.resolve(__dirname, '..', pkg.jupyterlab.outputDir);
fs.mkdirSync(out, { recursive: true });
fs.copyFileSync(
  path.join(__dirname, '..', 'install.json'),
  path.join(out, 'install.json')
);
