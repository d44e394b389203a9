export interface LayerViolation {
  file: string;
  line: number;
  target: string;
  why: string;
}
export const LAYERS: Record<string, string[] | null>;
export function unitOf(rel: string): string;
export function checkLayers(srcDir: string): LayerViolation[];
