/** The product mark: a small influence matrix. */
export function Logo({ size = 22 }: { size?: number }) {
  return (
    <svg width={size} height={size} viewBox="0 0 32 32" aria-hidden="true">
      <rect width="32" height="32" rx="7" fill="var(--panel-raised)" stroke="var(--border-strong)" />
      <rect x="7" y="7" width="5" height="5" rx="1" fill="#3B82F6" />
      <rect x="13.5" y="7" width="5" height="5" rx="1" fill="#F43F5E" />
      <rect x="20" y="7" width="5" height="5" rx="1" fill="#E2E8F0" />
      <rect x="7" y="13.5" width="5" height="5" rx="1" fill="#F43F5E" />
      <rect x="13.5" y="13.5" width="5" height="5" rx="1" fill="#E2E8F0" />
      <rect x="20" y="13.5" width="5" height="5" rx="1" fill="#3B82F6" />
      <rect x="13.5" y="20" width="5" height="5" rx="1" fill="#3B82F6" />
    </svg>
  );
}
