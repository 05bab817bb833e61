/**
 * The PAI sidebar icon. Uses Lab's icon colour classes so it follows the theme.
 */
import { LabIcon } from '@jupyterlab/ui-components';

const PAI_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 3h7.5a5.5 5.5 0 0 1 0 11H7v7H4V3zm3 3v5h4.5a2.5 2.5 0 0 0 0-5H7z"/>
    <circle cx="18.5" cy="17.5" r="3"/>
    <rect x="15" y="3" width="6" height="2.6" rx="1.3"/>
    <rect x="17" y="7.4" width="4" height="2.6" rx="1.3"/>
  </g>
</svg>`;

export const paiIcon = new LabIcon({ name: 'pai-lab:pai', svgstr: PAI_SVG });
